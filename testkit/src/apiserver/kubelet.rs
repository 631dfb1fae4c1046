//! The process kubelet: runs the containers of pods bound to the simulated nodes as local
//! processes, instead of only marking pods Running.
//!
//! What it runs: a container following Spark's image convention with args `executor` (and
//! no `command`) starts the JVM Spark's image entrypoint
//! (`resource-managers/kubernetes/docker/src/main/dockerfiles/spark/entrypoint.sh`) would:
//! `java $SPARK_JAVA_OPT_* (by number) -Xms$SPARK_EXECUTOR_MEMORY -Xmx$SPARK_EXECUTOR_MEMORY
//! -cp $SPARK_CONF_DIR:$SPARK_HOME/jars/* org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
//! --driver-url … --executor-id … --cores … --app-id … --hostname $SPARK_EXECUTOR_POD_IP
//! --resourceProfileId … --podName …`, with `SPARK_HOME` the pyspark package of a venv; with
//! args `driver …` (cluster mode) it runs what that entrypoint runs: `$SPARK_HOME/bin/spark-submit
//! --conf spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS --conf
//! spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS --deploy-mode client` and
//! the container's other args (paths mapped). The JVMs of these containers resolve cluster
//! names (Spark's driver Service, `<svc>.<ns>.svc`) from a hosts file per pod that the
//! kubelet keeps up to date (`dns`). A
//! container whose image was registered ([`ProcessKubelet::image`], e.g. our daemon's) runs
//! the registered program with the container's args, paths mapped. A container of an image
//! on the test's "host no-op" allow-list ([`ProcessKubelet::noop_image`], e.g. the
//! DaemonSet's `busybox` chown init container: the kubelet already created the directories
//! as the test's user) exits 0 at once without running anything. Any other container fails
//! the pod (phase `Failed`, reason `UnsupportedContainer`, a message naming the container),
//! as does env or a volume it cannot resolve (`CreateContainerConfigError`): nothing waits
//! forever.
//!
//! Addresses: node `i` (0-based) is `127.0.1.{i+1}` (`status.hostIP`; another /24 with
//! [`ProcessKubelet::node_network`], so that tests running at once whose programs bind fixed
//! ports on the node addresses do not collide); each pod gets its own
//! loopback address `127.1.x.y` (`status.podIP`; `hostNetwork` pods get their node's). The
//! whole 127.0.0.0/8 range is local on Linux, so processes bind and reach these directly.
//! There are no network namespaces: a program that binds `0.0.0.0` would take the port on
//! every simulated node at once, so a registered image can name the env through which its
//! program takes its listen address ([`ProcessKubelet::address_env`]); the kubelet sets it
//! to the pod IP, standing in for the pod's own network (manifests keep binding all
//! addresses, which on a real node includes the node IP and localhost).
//!
//! API access: every container gets `KUBECONFIG` (unless its env sets it) naming a
//! kubeconfig file for the fake API server over plain HTTP, the kubelet's convention in place
//! of the in-cluster service-account config (which needs HTTPS and a token).
//!
//! Files: one consistent path mapping, no mount namespaces (those need privileges this
//! machine's tests do not have): every volume is a directory under the kubelet's work dir —
//! `emptyDir` per pod, `hostPath` per node (the same directory for every pod of the node,
//! so an executor and the node daemon see the same files), `configMap`/`secret` per pod with
//! one file per key — and env values naming a container mount path (or a path under it,
//! also in comma-separated lists such as `SPARK_LOCAL_DIRS`) are rewritten to that directory.
//!
//! Env: literal values, and `fieldRef` for `metadata.name`, `metadata.namespace`,
//! `metadata.uid`, `metadata.labels['KEY']`, `metadata.annotations['KEY']`, `spec.nodeName`,
//! `spec.serviceAccountName`, `status.podIP`, `status.hostIP`, `configMapKeyRef` and
//! `secretKeyRef` (`optional` honoured; a missing one fails the pod with
//! `CreateContainerConfigError`); `$(VAR)` references to earlier entries are expanded in env
//! values, and to the container's env in `command` and `args` (`$$` is a literal `$`, an
//! unknown name stays as written). `envFrom` (`configMapRef`/`secretRef`, `prefix`,
//! `optional`) comes first, in order, and `env` entries override it; keys that are not valid
//! env names are skipped, as the kubelet does.
//!
//! Lifecycle: init containers run one at a time, in order, to completion (the pod is
//! `Pending` meanwhile); then every main container starts, each in its own process group.
//! A container exiting is restarted per `restartPolicy` (`Always`, the default, or
//! `OnFailure` for a non-zero exit) after a back-off (1 s, doubling, at most 20 s), counted in
//! `restartCount`; an init container failing under `Never` fails the pod. The pod is
//! `Succeeded`/`Failed` once every main container has exited for good (all 0 / any other).
//! `httpGet` readiness and liveness probes are sent to the pod IP (or `host`) on their
//! schedule (`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `failureThreshold`,
//! `successThreshold`; periods may be capped with [`ProcessKubelet::max_probe_period`]);
//! `containerStatuses[].ready` follows readiness (a container without a readiness probe is
//! ready while it runs) and the pod's `Ready`/`ContainersReady` conditions follow all of them;
//! a liveness failure kills the container, which is then restarted by policy.
//! `tcpSocket` probes connect to the pod IP (or `host`); `exec` probes run only the
//! container's registered program (exit 0 = success; other commands make the container
//! unsupported); `grpc` and startup probes are not run yet.
//! On deletion each container's `preStop` hook runs first (`httpGet`, or `exec` of the
//! container's registered program; other `exec` commands are skipped), then its process
//! group gets SIGTERM; every group still there when the grace period is over gets SIGKILL,
//! and the pod is removed once the processes are gone. Every process group is killed when the
//! server stops or is dropped (a failing test included), and every process the kubelet starts
//! is SIGKILLed by the kernel when this process dies, even killed outright (see `spawner`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, KeyToPath, Pod, PodCondition, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Shared;
use super::store::{Key, State, now_time};

mod dns;
mod spawner;

/// The main class Spark's image runs for `executor`.
const EXECUTOR_MAIN: &str = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend";
/// What Spark's image runs for `driver`, under `SPARK_HOME`.
const DRIVER_SUBMIT: &str = "bin/spark-submit";
/// The hosts file of a pod running JVMs, in its pod directory.
const HOSTS_FILE: &str = "hosts";
/// The `java.io.tmpdir` of a pod's JVMs, in its pod directory: a container's own `/tmp`.
const POD_TMP: &str = "tmp";
/// How long a pod waits for a missing ConfigMap or Secret of its volumes, by default.
const MOUNT_WAIT: Duration = Duration::from_secs(20);
/// The reason of a start error that a later attempt may not have (a missing volume source).
const FAILED_MOUNT: &str = "FailedMount";
/// How often the kubelet looks at pods and processes.
const TICK: Duration = Duration::from_millis(50);
/// The first restart back-off, doubled after each restart.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest restart back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(20);

/// Configures the process kubelet ([`super::Builder::process_kubelet`]).
#[derive(Debug, Clone)]
pub struct ProcessKubelet {
    spark_home: PathBuf,
    work_dir: PathBuf,
    java: PathBuf,
    /// Image repository → the local program that is its entrypoint.
    images: BTreeMap<String, PathBuf>,
    /// Image repository → env names the kubelet sets to the pod IP.
    address_env: BTreeMap<String, Vec<String>>,
    /// Image repositories whose containers succeed at once.
    noop_images: HashSet<String>,
    /// The longest period between two probes of a container.
    max_probe_period: Option<Duration>,
    /// How long a pod waits for a missing ConfigMap or Secret of its volumes.
    mount_wait: Duration,
    /// The first three bytes of the nodes' addresses.
    node_network: String,
    /// The first two bytes of the pods' own addresses.
    pod_network: String,
    /// JVM options put before a Spark container's own `JAVA_TOOL_OPTIONS`.
    java_options: String,
}

impl ProcessKubelet {
    /// A kubelet running Spark from `spark_home` (the `pyspark` package directory of a venv,
    /// holding `jars/`), keeping pod directories and logs under `work_dir`. Java is
    /// `$JAVA_HOME/bin/java`, or `java` on the `PATH`.
    pub fn new(spark_home: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        let java = std::env::var_os("JAVA_HOME")
            .map_or_else(|| PathBuf::from("java"), |h| Path::new(&h).join("bin/java"));
        Self {
            spark_home: spark_home.into(),
            work_dir: work_dir.into(),
            java,
            images: BTreeMap::new(),
            address_env: BTreeMap::new(),
            noop_images: HashSet::new(),
            max_probe_period: None,
            mount_wait: MOUNT_WAIT,
            node_network: "127.0.1".into(),
            pod_network: "127.1".into(),
            java_options: String::new(),
        }
    }

    /// Gives node `i` (0-based) the address `<network>.{i+1}` instead of `127.0.1.{i+1}`;
    /// `network` is three bytes of 127.0.0.0/8, e.g. `"127.0.7"`.
    pub fn node_network(mut self, network: &str) -> Self {
        self.node_network = network.trim_end_matches('.').to_owned();
        self
    }

    /// Gives pods their own addresses in `<network>.x.y` instead of `127.1.x.y`; `network` is
    /// two bytes of 127.0.0.0/8, e.g. `"127.21"`. Tests running at once whose pods bind fixed
    /// ports (Spark drivers: 7078, 7079) use distinct pod networks.
    pub fn pod_network(mut self, network: &str) -> Self {
        self.pod_network = network.trim_end_matches('.').to_owned();
        self
    }

    /// The address of node `i` (0-based), as `status.hostIP` of its pods.
    pub fn node_address(&self, i: usize) -> String {
        format!("{}.{}", self.node_network, (i % 254) + 1)
    }

    /// Runs containers of `image` (any tag) as `program`: the image's entrypoint is the
    /// program, a container `command` must name it (by file name) and its remaining words
    /// and `args` are the arguments, with paths under mount paths mapped (also in
    /// `--flag=value`). E.g. `.image("kshuffle-node", target_dir.join("kshuffle-node"))`.
    pub fn image(mut self, image: &str, program: impl Into<PathBuf>) -> Self {
        self.images
            .insert(repository(image).to_owned(), program.into());
        self
    }

    /// Sets each of `names` in the env of `image`'s containers to the pod IP (unless the
    /// container's env sets it): how its program learns the one address it may bind, there
    /// being no network namespace per pod. E.g.
    /// `.address_env("kshuffle-node", &["KSHUFFLE_BIND", "KSHUFFLE_ADMIN_BIND"])`.
    pub fn address_env(mut self, image: &str, names: &[&str]) -> Self {
        self.address_env.insert(
            repository(image).to_owned(),
            names.iter().map(|n| (*n).to_owned()).collect(),
        );
        self
    }

    /// Puts `image` (any tag) on the allow-list of host no-op images: its containers exit 0
    /// at once, nothing is run. For init containers whose work the simulation already did,
    /// e.g. the DaemonSet's `busybox` chown of directories the kubelet created as the test's
    /// user.
    pub fn noop_image(mut self, image: &str) -> Self {
        self.noop_images.insert(repository(image).to_owned());
        self
    }

    /// Probes every container at least this often (a manifest's `periodSeconds: 5` slows a
    /// test's start by up to that much).
    pub fn max_probe_period(mut self, period: Duration) -> Self {
        self.max_probe_period = Some(period);
        self
    }

    /// How long a pod stays `Pending` waiting for a ConfigMap or Secret its volumes name
    /// (default 20 s) before it fails with `CreateContainerConfigError`. A real kubelet
    /// retries the mount for ever; Spark's cluster mode creates the driver pod first and its
    /// ConfigMaps right after.
    pub fn mount_wait(mut self, wait: Duration) -> Self {
        self.mount_wait = wait;
        self
    }

    /// Runs `java` instead of `$JAVA_HOME/bin/java` (tests use a script that records what it
    /// was started with).
    pub fn java(mut self, java: impl Into<PathBuf>) -> Self {
        self.java = java.into();
        self
    }

    /// Gives the JVMs of Spark's containers `options` (in `JAVA_TOOL_OPTIONS`, before the
    /// container's own, which win), e.g. [`crate::support::TEST_JVM_OPTIONS`].
    pub fn java_options(mut self, options: &str) -> Self {
        self.java_options = options.to_owned();
        self
    }

    /// The directory of a pod: its volumes, its containers' working directory, and their logs:
    /// `stdout`/`stderr` for the first main container, `<container>.stdout`/`.stderr` for the
    /// others (init containers included); restarts append.
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.work_dir.join("pods").join(ns).join(name)
    }

    /// The directory standing in for `host_path` on `node` (every pod of the node that mounts
    /// that hostPath sees this one directory).
    pub fn host_path(&self, node: &str, host_path: &str) -> PathBuf {
        self.work_dir
            .join("nodes")
            .join(node)
            .join(host_path.trim_start_matches('/'))
    }

    fn kubeconfig(&self) -> PathBuf {
        self.work_dir.join("kubeconfig")
    }
}

/// How to start one container again and again.
#[derive(Debug, Clone)]
struct Launch {
    program: PathBuf,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    dir: PathBuf,
    log: String,
}

/// One probe of a container, resolved.
#[derive(Debug, Clone)]
struct ProbeSpec {
    action: ProbeAction,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    success_threshold: u32,
}

/// What a probe does.
#[derive(Debug, Clone)]
enum ProbeAction {
    /// `httpGet`: host, port, path.
    Http(String, u16, String),
    /// `tcpSocket`: host, port.
    Tcp(String, u16),
    /// `exec` of the container's registered program.
    Exec(Box<Launch>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
}

#[derive(Debug)]
struct ProbeState {
    spec: ProbeSpec,
    next_at: Instant,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    fn new(spec: ProbeSpec, started: Instant) -> Self {
        Self {
            next_at: started + spec.initial_delay,
            spec,
            successes: 0,
            failures: 0,
        }
    }
}

/// A container of a running pod.
#[derive(Debug)]
struct Ctr {
    name: String,
    image: String,
    init: bool,
    /// `None`: a host no-op image.
    launch: Option<Launch>,
    child: Option<Child>,
    started_at: Option<Time>,
    /// The last exit: code and when.
    last_exit: Option<(i32, Time)>,
    /// Terminated for good (no restart coming).
    done: bool,
    restarts: i32,
    restart_at: Option<Instant>,
    backoff: Duration,
    ready: bool,
    readiness: Option<(Probe, ProbeState)>,
    liveness: Option<(Probe, ProbeState)>,
    pre_stop: Option<PreStop>,
    /// The running preStop hook, once deletion started.
    hook: Option<Hook>,
    /// SIGTERM was sent (after the preStop hook).
    term_sent: bool,
}

/// A container's `lifecycle.preStop`, resolved.
#[derive(Debug, Clone)]
enum PreStop {
    /// `exec` of the container's registered program.
    Exec(Launch),
    /// `httpGet`: host, port, path.
    Http(String, u16, String),
}

/// A preStop hook in progress.
#[derive(Debug)]
enum Hook {
    Proc(Child),
    Thread(std::thread::JoinHandle<()>),
}

impl Hook {
    fn start(p: &PreStop) -> Option<Self> {
        match p {
            PreStop::Exec(l) => spawn_launch(l).ok().map(Hook::Proc),
            PreStop::Http(host, port, path) => {
                let (host, port, path) = (host.clone(), *port, path.clone());
                Some(Hook::Thread(std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let addr = format!("{host}:{port}");
                    if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                })))
            }
        }
    }

    fn finished(&mut self) -> bool {
        match self {
            Hook::Proc(c) => !matches!(c.try_wait(), Ok(None)),
            Hook::Thread(t) => t.is_finished(),
        }
    }

    fn kill(&mut self) {
        if let Hook::Proc(c) = self {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

/// A pod whose containers the kubelet runs.
#[derive(Debug)]
struct PodRun {
    uid: String,
    pod_ip: String,
    host_ip: String,
    restart_policy: String,
    ctrs: Vec<Ctr>,
    /// Index of the init container running, or `None` once all of them succeeded.
    init_at: Option<usize>,
    /// When SIGKILL is due, once SIGTERM was sent.
    kill_at: Option<Instant>,
    /// The pod failed for good (an init container under `Never`).
    failed: Option<String>,
    /// Its status must be written.
    dirty: bool,
    /// The hosts file of its JVMs (Spark containers only; see `dns`).
    hosts: Option<HostsFile>,
}

/// A pod's hosts file: where, for which pod name, and what was last written.
#[derive(Debug)]
struct HostsFile {
    path: PathBuf,
    pod_name: String,
    written: String,
}

impl HostsFile {
    /// Writes the file if its text changed. An error is logged and retried next time.
    fn refresh(&mut self, pod_ip: &str, services: &BTreeMap<String, Vec<String>>) {
        let text = dns::hosts_text(pod_ip, &self.pod_name, machine_hostname(), services);
        if text == self.written {
            return;
        }
        match dns::write_atomically(&self.path, &text) {
            Ok(()) => self.written = text,
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot write hosts file")
            }
        }
    }
}

/// The machine's host name, read once.
fn machine_hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(dns::machine_hostname).as_deref()
}

/// The processes of running pods, shared with the server handle so Drop can kill them.
#[derive(Debug, Default)]
pub struct Procs(Mutex<HashMap<Key, PodRun>>);

fn signal_group(pid: u32, sig: &str) {
    // `kill` on the negative pid signals the whole process group the child leads.
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, PodRun>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs every process group and reaps the leaders.
    pub fn kill_all(&self) {
        let mut procs = self.lock();
        for (_, mut run) in procs.drain() {
            for c in &mut run.ctrs {
                if let Some(mut child) = c.child.take() {
                    signal_group(child.id(), "KILL");
                    let _ = child.wait();
                }
                if let Some(mut h) = c.hook.take() {
                    h.kill();
                }
            }
        }
    }
}

/// A probe to send, collected under the lock and sent without it.
struct DueProbe {
    key: Key,
    uid: String,
    ctr: usize,
    kind: ProbeKind,
    action: ProbeAction,
    timeout: Duration,
}

/// Runs the kubelet until the server stops, then kills every process it started.
pub async fn run(shared: Arc<Shared>, cfg: ProcessKubelet, procs: Arc<Procs>, api: SocketAddr) {
    if let Err(e) = write_kubeconfig(&cfg, api) {
        tracing::warn!(error = %e, "process kubelet: cannot write its kubeconfig");
    }
    let mut failed: HashSet<String> = HashSet::new();
    let mut waiting: HashMap<String, (Instant, String)> = HashMap::new();
    let mut next_ip: u32 = 1;
    // Probes run as their own tasks, so a slow one (up to its timeout) holds up nothing;
    // their results are applied on the next tick.
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let probes = tokio_util::task::TaskTracker::new();
    loop {
        let mut done = Vec::new();
        while let Ok(r) = results.try_recv() {
            done.push(r);
        }
        if !done.is_empty() {
            apply_probes(&procs, done);
        }
        let mut starts = Starts {
            failed: &mut failed,
            waiting: &mut waiting,
            next_ip: &mut next_ip,
        };
        for p in reconcile(&shared, &cfg, &procs, &mut starts) {
            let tx = results_tx.clone();
            let cancel = shared.cancel.clone();
            probes.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    ok = send_probe(&p.action, p.timeout) => {
                        let _ = tx.send((p, ok));
                    }
                }
            });
        }
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    probes.close();
    procs.kill_all();
}

fn write_kubeconfig(cfg: &ProcessKubelet, api: SocketAddr) -> std::io::Result<()> {
    fs::create_dir_all(&cfg.work_dir)?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    );
    fs::write(cfg.kubeconfig(), text)
}

/// One probe, within `timeout`.
async fn send_probe(action: &ProbeAction, timeout: Duration) -> bool {
    match action {
        ProbeAction::Http(host, port, path) => http_probe(host, *port, path, timeout).await,
        ProbeAction::Tcp(host, port) => matches!(
            tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port))
            )
            .await,
            Ok(Ok(_))
        ),
        ProbeAction::Exec(launch) => exec_probe(launch, timeout).await,
    }
}

/// Runs the probe's command: success is exit code 0 within `timeout` (then its process
/// group is killed, as a probe timing out).
async fn exec_probe(launch: &Launch, timeout: Duration) -> bool {
    let Ok(mut child) = spawn_launch(launch) else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // Whatever the command left in its group goes too.
                signal_group(child.id(), "KILL");
                return status.success();
            }
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// An HTTP/1.0 GET: success is a status from 200 to 399, within `timeout`.
async fn http_probe(host: &str, port: u16, path: &str, timeout: Duration) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/testkit\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(head.get_mut(len..)?).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = String::from_utf8_lossy(head.get(..len)?).into_owned();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}

fn apply_probes(procs: &Procs, results: Vec<(DueProbe, bool)>) {
    let mut procs = procs.lock();
    for (p, ok) in results {
        let Some(run) = procs.get_mut(&p.key).filter(|r| r.uid == p.uid) else {
            continue;
        };
        let Some(c) = run.ctrs.get_mut(p.ctr) else {
            continue;
        };
        if c.child.is_none() {
            continue;
        }
        let slot = match p.kind {
            ProbeKind::Readiness => c.readiness.as_mut(),
            ProbeKind::Liveness => c.liveness.as_mut(),
        };
        let Some((_, st)) = slot else {
            continue;
        };
        if ok {
            st.successes = st.successes.saturating_add(1);
            st.failures = 0;
        } else {
            st.failures = st.failures.saturating_add(1);
            st.successes = 0;
        }
        let pass = st.successes >= st.spec.success_threshold;
        let fail = st.failures >= st.spec.failure_threshold;
        match p.kind {
            ProbeKind::Readiness => {
                if pass && !c.ready || fail && c.ready {
                    c.ready = pass;
                    run.dirty = true;
                }
            }
            ProbeKind::Liveness => {
                if fail && let Some(child) = &c.child {
                    tracing::debug!(pod = %p.key.1, container = %c.name, "liveness probe failed: killing");
                    signal_group(child.id(), "KILL");
                }
            }
        }
    }
}

/// The `n`th address (from 1) of a /16 `prefix` ("a.b"), skipping host bytes 0 and 255:
/// distinct for the first 254 × 256 values, then wrapping.
pub fn nth_address(prefix: &str, n: u64) -> String {
    let i = n.saturating_sub(1) % (254 * 256);
    format!("{prefix}.{}.{}", i / 254, i % 254 + 1)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn node_ip(cfg: &ProcessKubelet, nodes: &[super::Node], name: &str) -> Option<String> {
    let i = nodes.iter().position(|n| n.name == name)?;
    Some(cfg.node_address(i))
}

/// Spawns container `i` of `run` (a no-op image "exits" 0 at once).
fn spawn(run: &mut PodRun, i: usize, now: Instant) {
    let Some(c) = run.ctrs.get_mut(i) else {
        return;
    };
    run.dirty = true;
    c.restart_at = None;
    c.ready = false;
    c.started_at = Some(now_time());
    let Some(launch) = &c.launch else {
        c.last_exit = Some((0, now_time()));
        return;
    };
    match spawn_launch(launch) {
        Ok(child) => {
            c.child = Some(child);
            for (_, st) in c.readiness.iter_mut().chain(c.liveness.iter_mut()) {
                *st = ProbeState::new(st.spec.clone(), now);
            }
            c.ready = c.readiness.is_none();
        }
        Err(e) => {
            tracing::debug!(container = %c.name, error = %e, "cannot start container");
            c.last_exit = Some((128, now_time()));
        }
    }
}

fn spawn_launch(l: &Launch) -> std::io::Result<Child> {
    fs::create_dir_all(l.dir.join(POD_TMP))?;
    let open = |suffix: &str| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l.dir.join(format!("{}{suffix}", l.log)))
    };
    let stdout = open("stdout")?;
    let stderr = open("stderr")?;
    let mut cmd = Command::new(&l.program);
    cmd.args(&l.argv);
    // The container sees its own env plus what a process needs to find java and a home.
    cmd.env_clear();
    for keep in ["PATH", "HOME", "JAVA_HOME", "LANG", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(&l.env)
        .current_dir(&l.dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // Through the one long-lived spawner thread, so the child dies with this process (even
    // SIGKILLed) and not with the thread that happens to run this.
    spawner::spawn(cmd)
}

/// Whether a container that exited with `code` is restarted under `policy`.
fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Advances one pod: exits, init order, restarts, deletion. Returns false once the pod
/// is gone (its run is to be dropped).
fn step_run(
    run: &mut PodRun,
    deleting: Option<Instant>,
    key: &Key,
    now: Instant,
    probes: &mut Vec<DueProbe>,
) -> bool {
    // Exits.
    for c in &mut run.ctrs {
        let Some(child) = &mut c.child else {
            continue;
        };
        let Some(status) = child.try_wait().ok().flatten() else {
            continue;
        };
        // As a container's teardown: whatever the process left in its group goes too.
        signal_group(child.id(), "KILL");
        c.child = None;
        c.ready = false;
        let code = status.code().unwrap_or(137);
        c.last_exit = Some((code, now_time()));
        run.dirty = true;
    }
    if let Some(deadline) = deleting {
        let first = run.kill_at.is_none();
        run.kill_at = Some(deadline);
        let overdue = deadline <= now;
        let mut alive = false;
        for c in &mut run.ctrs {
            let Some(child) = &c.child else {
                if let Some(mut h) = c.hook.take() {
                    h.kill();
                }
                continue;
            };
            alive = true;
            let pid = child.id();
            if first && let Some(p) = &c.pre_stop {
                // The hook runs first; SIGTERM follows when it is done (or the grace ends).
                c.hook = Hook::start(p);
            }
            if overdue {
                if let Some(mut h) = c.hook.take() {
                    h.kill();
                }
                signal_group(pid, "KILL");
            } else if !c.term_sent && c.hook.as_mut().is_none_or(Hook::finished) {
                if let Some(mut h) = c.hook.take() {
                    h.kill();
                }
                signal_group(pid, "TERM");
                c.term_sent = true;
            }
        }
        return alive;
    }
    if run.failed.is_some() {
        return true;
    }
    // Init containers: one at a time.
    if let Some(at) = run.init_at {
        let Some(c) = run.ctrs.get_mut(at) else {
            return true;
        };
        if c.child.is_none() && c.restart_at.is_none() {
            match c.last_exit.as_ref().map(|(code, _)| *code) {
                Some(0) => {
                    let next = at + 1;
                    if run.ctrs.get(next).is_some_and(|c| c.init) {
                        run.init_at = Some(next);
                        spawn(run, next, now);
                    } else {
                        run.init_at = None;
                        let mains: Vec<usize> = (next..run.ctrs.len()).collect();
                        for i in mains {
                            spawn(run, i, now);
                        }
                    }
                    run.dirty = true;
                    return true;
                }
                Some(code) if !restarts(&run.restart_policy, code) => {
                    run.failed = Some(format!(
                        "init container {:?} exited with code {code}",
                        c.name
                    ));
                    run.dirty = true;
                    return true;
                }
                Some(_) => {
                    c.restart_at = Some(now + c.backoff);
                }
                None => {}
            }
        }
        if c.restart_at.is_some_and(|t| t <= now) {
            c.restarts = c.restarts.saturating_add(1);
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            spawn(run, at, now);
        }
        return true;
    }
    // Main containers: restarts and probes.
    for i in 0..run.ctrs.len() {
        let Some(c) = run.ctrs.get_mut(i) else {
            continue;
        };
        if c.init || c.done {
            continue;
        }
        if c.child.is_none() {
            match (c.restart_at, c.last_exit.as_ref().map(|(code, _)| *code)) {
                (Some(t), _) if t <= now => {
                    c.restarts = c.restarts.saturating_add(1);
                    c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                    spawn(run, i, now);
                }
                (Some(_), _) => {}
                (None, Some(code)) if restarts(&run.restart_policy, code) => {
                    c.restart_at = Some(now + c.backoff);
                }
                (None, Some(_)) => {
                    c.done = true;
                    run.dirty = true;
                }
                (None, None) => {}
            }
            continue;
        }
        for (kind, slot) in [
            (ProbeKind::Readiness, c.readiness.as_mut()),
            (ProbeKind::Liveness, c.liveness.as_mut()),
        ] {
            let Some((_, st)) = slot else {
                continue;
            };
            if st.next_at <= now {
                st.next_at = now + st.spec.period;
                probes.push(DueProbe {
                    key: key.clone(),
                    uid: run.uid.clone(),
                    ctr: i,
                    kind,
                    action: st.spec.action.clone(),
                    timeout: st.spec.timeout,
                });
            }
        }
    }
    true
}

fn reconcile(
    shared: &Shared,
    cfg: &ProcessKubelet,
    procs: &Procs,
    starts: &mut Starts<'_>,
) -> Vec<DueProbe> {
    let Starts {
        failed,
        waiting,
        next_ip,
    } = starts;
    let nodes = shared
        .nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let now = Instant::now();
    let mut state = shared.store.lock();
    let mut procs = procs.lock();
    let mut changed = false;
    let mut probes = Vec::new();

    let keys: Vec<Key> = procs.keys().cloned().collect();
    for key in keys {
        let Some(run) = procs.get_mut(&key) else {
            continue;
        };
        let tracked = state.pods.get(&key).filter(|t| uid(&t.pod) == run.uid);
        let Some(tracked) = tracked else {
            // The pod is gone (force-deleted): its processes go at once.
            for c in &mut run.ctrs {
                if let Some(mut child) = c.child.take() {
                    signal_group(child.id(), "KILL");
                    let _ = child.wait();
                }
            }
            procs.remove(&key);
            continue;
        };
        let deleting = tracked.delete_at.map(|(_, deadline)| deadline);
        if !step_run(run, deleting, &key, now, &mut probes) {
            procs.remove(&key);
            state.remove(&key);
            changed = true;
            continue;
        }
        if run.dirty && deleting.is_none() {
            run.dirty = false;
            state.modify_meta(&key, |t| write_status(&mut t.pod, run));
            changed = true;
        }
    }

    // Deleting pods with no process: gone at once.
    let idle: Vec<Key> = state
        .pods
        .iter()
        .filter(|(k, t)| t.delete_at.is_some() && !procs.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect();
    for key in idle {
        state.remove(&key);
        changed = true;
    }

    // Bound pods to start.
    let to_start: Vec<(Key, Pod)> = state
        .pods
        .iter()
        .filter(|(k, t)| {
            t.delete_at.is_none()
                && phase(&t.pod) == Some("Pending")
                && t.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty())
                && !procs.contains_key(*k)
                && !failed.contains(&uid(&t.pod))
        })
        .map(|(k, t)| (k.clone(), t.pod.clone()))
        .collect();
    for (key, pod) in to_start {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let host_ip = node_ip(cfg, &nodes, &node).unwrap_or_else(|| cfg.node_address(253));
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let pod_uid = uid(&pod);
        let pod_ip = if host_network {
            host_ip.clone()
        } else if let Some((_, ip)) = waiting.get(&pod_uid) {
            ip.clone()
        } else {
            let n = **next_ip;
            **next_ip = next_ip.wrapping_add(1);
            nth_address(&cfg.pod_network, u64::from(n))
        };
        let ips = (pod_ip.clone(), host_ip.clone());
        let prepared = prepare(cfg, &state, &pod, &key, &ips);
        let since = match &prepared {
            Err((FAILED_MOUNT, _)) => Some(
                waiting
                    .entry(pod_uid.clone())
                    .or_insert_with(|| (now, pod_ip.clone()))
                    .0,
            ),
            _ => waiting.remove(&pod_uid).map(|(t, _)| t),
        };
        match prepared {
            Err((FAILED_MOUNT, message))
                if since.is_some_and(|t| now.duration_since(t) < cfg.mount_wait) =>
            {
                // Pending, as a real kubelet keeps it while the mount fails; tried again
                // next tick.
                tracing::trace!(pod = %key.1, %message, "waiting for a volume source");
                continue;
            }
            Err((FAILED_MOUNT, message)) => {
                waiting.remove(&pod_uid);
                tracing::debug!(pod = %key.1, %message, "cannot run pod");
                failed.insert(pod_uid);
                state.modify_meta(&key, |t| {
                    fail(&mut t.pod, &host_ip, "CreateContainerConfigError", message)
                });
            }
            Ok(mut run) => {
                match run.init_at {
                    Some(i) => spawn(&mut run, i, now),
                    None => {
                        for i in 0..run.ctrs.len() {
                            spawn(&mut run, i, now);
                        }
                    }
                }
                run.dirty = false;
                state.modify_meta(&key, |t| write_status(&mut t.pod, &run));
                procs.insert(key.clone(), run);
            }
            Err((reason, message)) => {
                tracing::debug!(pod = %key.1, %reason, %message, "cannot run pod");
                failed.insert(pod_uid);
                state.modify_meta(&key, |t| fail(&mut t.pod, &host_ip, reason, message));
            }
        }
        changed = true;
    }

    // Waits of pods gone meanwhile.
    if !waiting.is_empty() {
        let live: HashSet<String> = state.pods.values().map(|t| uid(&t.pod)).collect();
        waiting.retain(|u, _| live.contains(u));
    }

    // Cluster DNS for the JVMs: every Spark pod's hosts file follows the Services.
    if procs.values().any(|r| r.hosts.is_some()) {
        let services = dns::service_addresses(&state);
        for run in procs.values_mut() {
            let ip = run.pod_ip.clone();
            if let Some(h) = &mut run.hosts {
                h.refresh(&ip, &services);
            }
        }
    }
    drop(procs);
    drop(state);
    if changed {
        shared.store.changed.notify_one();
    }
    probes
}

type StartError = (&'static str, String);

/// What the kubelet remembers about pods it could not start (yet), and the next pod address.
struct Starts<'a> {
    /// Pods failed for good, by uid.
    failed: &'a mut HashSet<String>,
    /// Pods waiting for a volume source, by uid: since when, and their address.
    waiting: &'a mut HashMap<String, (Instant, String)>,
    next_ip: &'a mut u32,
}

fn config_error(message: String) -> StartError {
    ("CreateContainerConfigError", message)
}

/// Resolves a pod's volumes to directories (creating and filling them), by volume name.
fn volumes(
    cfg: &ProcessKubelet,
    state: &State,
    pod: &Pod,
    key: &Key,
) -> Result<HashMap<String, PathBuf>, StartError> {
    let dir = cfg.pod_dir(&key.0, &key.1).join("volumes");
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let io = |e: std::io::Error| config_error(format!("volume {:?}: {e}", v.name));
        let path = if v.empty_dir.is_some() {
            dir.join(&v.name)
        } else if let Some(h) = &v.host_path {
            cfg.work_dir
                .join("nodes")
                .join(&node)
                .join(h.path.trim_start_matches('/'))
        } else if let Some(cm) = &v.config_map {
            let obj =
                state
                    .objects
                    .get(&(super::Resource::ConfigMaps, key.0.clone(), cm.name.clone()));
            let Some(obj) = obj else {
                return Err((
                    FAILED_MOUNT,
                    format!("configmap \"{}\" not found (volume {:?})", cm.name, v.name),
                ));
            };
            let p = dir.join(&v.name);
            let files = obj["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, val)| {
                    (
                        k.clone(),
                        val.as_str().unwrap_or_default().as_bytes().to_vec(),
                    )
                })
                .collect();
            let what = format!("configmap \"{}\"", cm.name);
            project(&p, files, cm.items.as_deref(), &what, &v.name)?;
            p
        } else if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            let obj = state
                .objects
                .get(&(super::Resource::Secrets, key.0.clone(), name.clone()));
            let Some(obj) = obj else {
                return Err((
                    FAILED_MOUNT,
                    format!("secret \"{name}\" not found (volume {:?})", v.name),
                ));
            };
            let p = dir.join(&v.name);
            let files = obj["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, val)| {
                    let bytes = val
                        .as_str()
                        .and_then(|s| BASE64_STANDARD.decode(s).ok())
                        .unwrap_or_default();
                    (k.clone(), bytes)
                })
                .collect();
            let what = format!("secret \"{name}\"");
            project(&p, files, sec.items.as_deref(), &what, &v.name)?;
            p
        } else {
            return Err(config_error(format!(
                "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
                v.name
            )));
        };
        fs::create_dir_all(&path).map_err(io)?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Writes a ConfigMap's or Secret's keys as files in `dir`: every key under its own name, or
/// with `items` only those keys, each at its `path` (relative, no `..`; a missing key fails
/// the pod, as on a real kubelet).
fn project(
    dir: &Path,
    files: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
    what: &str,
    volume: &str,
) -> Result<(), StartError> {
    let io = |e: std::io::Error| config_error(format!("volume {volume:?}: {e}"));
    fs::create_dir_all(dir).map_err(io)?;
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        for (k, bytes) in files {
            fs::write(dir.join(k), bytes).map_err(io)?;
        }
        return Ok(());
    };
    for item in items {
        let Some((_, bytes)) = files.iter().find(|(k, _)| *k == item.key) else {
            return Err(config_error(format!(
                "{what} has no key {:?} (volume {volume:?})",
                item.key
            )));
        };
        let rel = Path::new(&item.path);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if item.path.is_empty() || !inside {
            return Err(config_error(format!(
                "volume {volume:?}: item path {:?} must be relative without '..'",
                item.path
            )));
        }
        let file = dir.join(rel);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        fs::write(&file, bytes).map_err(io)?;
    }
    Ok(())
}

/// Rewrites, in the `.properties` files of the ConfigMap and Secret volumes a container
/// mounts, values naming a mount path of the container (as env values are): Spark's
/// driver reads `spark.properties` from its conf ConfigMap, where e.g.
/// `spark.kubernetes.executor.podTemplateFile` names the pod template's mount path.
fn map_properties_files(
    pod: &Pod,
    c: &Container,
    vols: &HashMap<String, PathBuf>,
    mounts: &[(String, PathBuf)],
) -> Result<(), StartError> {
    let projected: HashSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| v.config_map.is_some() || v.secret.is_some())
        .map(|v| v.name.as_str())
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let Some(dir) = vols
            .get(&m.name)
            .filter(|_| projected.contains(m.name.as_str()))
        else {
            continue;
        };
        let io = |e: std::io::Error| config_error(format!("volume {:?}: {e}", m.name));
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "properties") || !path.is_file() {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io)?;
            let mapped = map_properties(&text, mounts);
            if mapped != text {
                fs::write(&path, mapped).map_err(io)?;
            }
        }
    }
    Ok(())
}

/// `key=value` lines of a properties text with paths in the values mapped; other lines
/// (comments, `key: value`, continuations) unchanged.
fn map_properties(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let end = line.get(body.len()..).unwrap_or_default();
        match body.split_once('=') {
            Some((k, v)) if !k.trim_start().starts_with(['#', '!']) => {
                out.push_str(k);
                out.push('=');
                out.push_str(&map_paths(v, mounts));
            }
            _ => out.push_str(body),
        }
        out.push_str(end);
    }
    out
}

/// Mount path → local directory, for one container.
fn mounts(
    c: &Container,
    vols: &HashMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf)>, StartError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(dir) = vols.get(&m.name) else {
            return Err(config_error(format!(
                "container {:?} mounts volume {:?}, which the pod does not define",
                c.name, m.name
            )));
        };
        let dir = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => dir.join(sub),
            None => dir.clone(),
        };
        out.push((m.mount_path.trim_end_matches('/').to_owned(), dir));
    }
    // Longest mount path first, so nested mounts win.
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    Ok(out)
}

/// Rewrites paths under a mount path to the local directory, element by element of a
/// comma-separated list.
fn map_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    value
        .split(',')
        .map(|part| {
            for (mount, dir) in mounts {
                if part == mount {
                    return dir.display().to_string();
                }
                if let Some(rest) = part.strip_prefix(mount.as_str())
                    && rest.starts_with('/')
                {
                    return format!("{}{rest}", dir.display());
                }
            }
            part.to_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Expands `$(NAME)` references to `vars` as the kubelet does in env values, `command` and
/// `args`: an unknown name stays as written, `$$` is a literal `$`.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(rest.get(..at).unwrap_or_default());
        let after = rest.get(at + 1..).unwrap_or_default();
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = inner.get(..end).unwrap_or_default();
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = inner.get(end + 1..).unwrap_or_default();
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of `key` in the ConfigMap or Secret `name` of the namespace; `None` if either
/// is missing.
fn key_ref(
    state: &State,
    resource: super::Resource,
    ns: &str,
    name: &str,
    key: &str,
) -> Option<String> {
    let obj = state
        .objects
        .get(&(resource, ns.to_owned(), name.to_owned()))?;
    let raw = obj["data"].get(key)?.as_str()?;
    if resource == super::Resource::Secrets {
        let bytes = BASE64_STANDARD.decode(raw).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        Some(raw.to_owned())
    }
}

/// The container's env, resolved: literal values (with `$(VAR)` expanded from the entries
/// before), `fieldRef`, `configMapKeyRef` and `secretKeyRef`.
fn env(
    state: &State,
    pod: &Pod,
    c: &Container,
    ips: &(String, String),
) -> Result<BTreeMap<String, String>, StartError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = env_from(state, &ns, c)?;
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                let keyed = [
                    from.config_map_key_ref.as_ref().map(|r| {
                        (
                            super::Resource::ConfigMaps,
                            "configmap",
                            &r.name,
                            &r.key,
                            r.optional,
                        )
                    }),
                    from.secret_key_ref.as_ref().map(|r| {
                        (
                            super::Resource::Secrets,
                            "secret",
                            &r.name,
                            &r.key,
                            r.optional,
                        )
                    }),
                ];
                if let Some((resource, kind, name, key, optional)) =
                    keyed.into_iter().flatten().next()
                {
                    match key_ref(state, resource, &ns, name, key) {
                        Some(v) => v,
                        None if optional == Some(true) => continue,
                        None => {
                            return Err(config_error(format!(
                                "env {:?}: {kind} \"{name}\" or its key {key:?} not found",
                                e.name
                            )));
                        }
                    }
                } else {
                    let Some(f) = &from.field_ref else {
                        return Err(config_error(format!(
                            "env {:?}: resourceFieldRef is not supported in valueFrom",
                            e.name
                        )));
                    };
                    let spec = pod.spec.as_ref();
                    let v = match f.field_path.as_str() {
                        "metadata.name" => pod.metadata.name.clone(),
                        "metadata.namespace" => pod.metadata.namespace.clone(),
                        "metadata.uid" => pod.metadata.uid.clone(),
                        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
                        "spec.serviceAccountName" => {
                            spec.and_then(|s| s.service_account_name.clone())
                        }
                        "status.podIP" => Some(ips.0.clone()),
                        "status.hostIP" => Some(ips.1.clone()),
                        other => {
                            let Some((map, key)) = metadata_key(other) else {
                                return Err(config_error(format!(
                                    "env {:?}: fieldRef {other:?} is not supported",
                                    e.name
                                )));
                            };
                            let map = if map == "labels" {
                                pod.metadata.labels.as_ref()
                            } else {
                                pod.metadata.annotations.as_ref()
                            };
                            // A missing key is "" on a real kubelet too.
                            map.and_then(|m| m.get(key)).cloned()
                        }
                    };
                    v.unwrap_or_default()
                }
            }
            (Some(v), None) => expand(v, &out),
            (None, None) => String::new(),
        };
        out.insert(e.name.clone(), value);
    }
    Ok(out)
}

/// The container's `envFrom`, in order (a later source wins): every key of each ConfigMap or
/// Secret, with its `prefix`, that makes a valid env name (others are skipped, as the kubelet
/// skips them with an event). A missing source fails the pod unless `optional`.
fn env_from(
    state: &State,
    ns: &str,
    c: &Container,
) -> Result<BTreeMap<String, String>, StartError> {
    let mut out = BTreeMap::new();
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let (resource, kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (
                super::Resource::ConfigMaps,
                "configmap",
                &r.name,
                r.optional,
            ),
            (None, Some(r)) => (super::Resource::Secrets, "secret", &r.name, r.optional),
            (None, None) => {
                return Err(config_error(format!(
                    "container {:?}: envFrom[{i}] names neither a configMapRef nor a secretRef",
                    c.name
                )));
            }
        };
        let Some(obj) = state.objects.get(&(resource, ns.to_owned(), name.clone())) else {
            if optional == Some(true) {
                continue;
            }
            return Err(config_error(format!(
                "container {:?}: envFrom {kind} \"{name}\" not found",
                c.name
            )));
        };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        for (key, val) in obj["data"].as_object().into_iter().flatten() {
            let var = format!("{prefix}{key}");
            if !is_env_name(&var) {
                tracing::debug!(container = %c.name, %var, "envFrom: not a valid env name, skipped");
                continue;
            }
            let raw = val.as_str().unwrap_or_default();
            let value = if resource == super::Resource::Secrets {
                let bytes = BASE64_STANDARD.decode(raw).unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                raw.to_owned()
            };
            out.insert(var, value);
        }
    }
    Ok(out)
}

/// A C identifier-like env name as the kubelet accepts from `envFrom` (letters, digits,
/// `_`, `-`, `.`; not starting with a digit).
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `metadata.labels['KEY']` or `metadata.annotations['KEY']` (the downward API's one-key
/// form; single or double quotes) as `("labels" | "annotations", KEY)`.
fn metadata_key(path: &str) -> Option<(&'static str, &str)> {
    let (map, rest) = if let Some(rest) = path.strip_prefix("metadata.labels[") {
        ("labels", rest)
    } else {
        ("annotations", path.strip_prefix("metadata.annotations[")?)
    };
    let key = rest.strip_suffix(']')?;
    let key = ['\'', '"']
        .into_iter()
        .find_map(|q| key.strip_prefix(q)?.strip_suffix(q))?;
    (!key.is_empty()).then_some((map, key))
}

fn unsupported(c: &Container, why: &str) -> StartError {
    (
        "UnsupportedContainer",
        format!(
            "container {:?} (image {:?}, command {:?}, args {:?}) {why}",
            c.name,
            c.image.as_deref().unwrap_or(""),
            c.command,
            c.args.as_deref().unwrap_or_default()
        ),
    )
}

/// An image's repository: without its tag or digest.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

/// Maps paths in one argument: the whole of it, or the value of `--flag=value`.
fn map_arg(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => {
            format!("{flag}={}", map_paths(value, mounts))
        }
        _ => map_paths(arg, mounts),
    }
}

/// The program and arguments of a container whose image was registered with
/// [`ProcessKubelet::image`]: the image's entrypoint is the registered program, `command`
/// (if any) must name it, and `args` follow, with paths mapped.
fn registered_command(
    c: &Container,
    program: &Path,
    mounts: &[(String, PathBuf)],
) -> Result<(PathBuf, Vec<String>), StartError> {
    let mut argv = Vec::new();
    if let Some(command) = &c.command {
        let named = command
            .first()
            .and_then(|first| Path::new(first).file_name())
            .is_some_and(|n| Some(n) == program.file_name());
        if !named {
            return Err(unsupported(
                c,
                &format!(
                    "has a command other than its image's registered program {}",
                    program.display()
                ),
            ));
        }
        argv.extend(command.iter().skip(1).cloned());
    }
    argv.extend(c.args.iter().flatten().cloned());
    let argv = argv.iter().map(|a| map_arg(a, mounts)).collect();
    Ok((program.to_owned(), argv))
}

/// The JVM Spark's image entrypoint starts for `executor`.
fn executor_command(
    cfg: &ProcessKubelet,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, Vec<String>), StartError> {
    let need = |name: &str| {
        env.get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| config_error(format!("executor env {name} is not set")))
    };
    let memory = need("SPARK_EXECUTOR_MEMORY")?;
    let mut java_opts: Vec<(u64, String)> = env
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("SPARK_JAVA_OPT_")?.parse().ok()?;
            Some((n, v.clone()))
        })
        .collect();
    java_opts.sort();
    let mut classpath = String::new();
    if let Some(conf) = env.get("SPARK_CONF_DIR") {
        classpath.push_str(conf);
        classpath.push(':');
    }
    classpath.push_str(&format!("{}/jars/*", cfg.spark_home.display()));
    let mut argv: Vec<String> = java_opts.into_iter().map(|(_, v)| v).collect();
    argv.extend([
        format!("-Xms{memory}"),
        format!("-Xmx{memory}"),
        "-cp".into(),
        classpath,
        EXECUTOR_MAIN.into(),
    ]);
    for (flag, var) in [
        ("--driver-url", "SPARK_DRIVER_URL"),
        ("--executor-id", "SPARK_EXECUTOR_ID"),
        ("--cores", "SPARK_EXECUTOR_CORES"),
        ("--app-id", "SPARK_APPLICATION_ID"),
        ("--hostname", "SPARK_EXECUTOR_POD_IP"),
        ("--resourceProfileId", "SPARK_RESOURCE_PROFILE_ID"),
    ] {
        argv.extend([flag.to_owned(), need(var)?]);
    }
    if let Some(name) = env.get("SPARK_EXECUTOR_POD_NAME").filter(|v| !v.is_empty()) {
        argv.extend(["--podName".to_owned(), name.clone()]);
    }
    Ok((cfg.java.clone(), argv))
}

/// What Spark's image entrypoint runs for `driver` (cluster mode): `$SPARK_HOME/bin/spark-submit
/// --conf spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS --conf
/// spark.executorEnv.SPARK_DRIVER_POD_IP=$SPARK_DRIVER_BIND_ADDRESS --deploy-mode client`
/// followed by the container's other args (`--properties-file` of the mounted ConfigMap,
/// `--class`, the primary resource, its arguments), paths under mounts mapped. The
/// `SPARK_DRIVER_POD_IP` conf is in the entrypoint of Spark's published 3.5 and 4.x images
/// (apache/spark-docker), not in the one in Spark's own tree.
fn driver_command(
    cfg: &ProcessKubelet,
    env: &BTreeMap<String, String>,
    c: &Container,
    mounts: &[(String, PathBuf)],
) -> Result<(PathBuf, Vec<String>), StartError> {
    let bind = env
        .get("SPARK_DRIVER_BIND_ADDRESS")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| config_error("driver env SPARK_DRIVER_BIND_ADDRESS is not set".into()))?;
    let mut argv = vec![
        "--conf".to_owned(),
        format!("spark.driver.bindAddress={bind}"),
        "--conf".to_owned(),
        format!("spark.executorEnv.SPARK_DRIVER_POD_IP={bind}"),
        "--deploy-mode".to_owned(),
        "client".to_owned(),
    ];
    argv.extend(c.args.iter().flatten().skip(1).map(|a| map_arg(a, mounts)));
    Ok((cfg.spark_home.join(DRIVER_SUBMIT), argv))
}

/// A container port given by number or by name (looked up in the container's ports).
fn container_port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Resolves a probe: `httpGet` and `tcpSocket` to the pod IP (or `host`), a named port looked
/// up in the container's ports; `exec` only of the container's registered program (by file
/// name, with the container's env; there is no image to run anything else in). Other
/// `exec` commands and `grpc` probes make the container unsupported.
fn probe_spec(
    cfg: &ProcessKubelet,
    c: &Container,
    probe: &Probe,
    pod_ip: &str,
    launch: Option<&Launch>,
) -> Result<ProbeSpec, StartError> {
    let port_error = |port: &IntOrString| {
        config_error(format!(
            "container {:?}: probe port {port:?} is not a port of the container",
            c.name
        ))
    };
    let action = if let Some(get) = &probe.http_get {
        let port = container_port(c, &get.port).ok_or_else(|| port_error(&get.port))?;
        ProbeAction::Http(
            get.host.clone().unwrap_or_else(|| pod_ip.to_owned()),
            port,
            get.path.clone().unwrap_or_else(|| "/".into()),
        )
    } else if let Some(tcp) = &probe.tcp_socket {
        let port = container_port(c, &tcp.port).ok_or_else(|| port_error(&tcp.port))?;
        ProbeAction::Tcp(tcp.host.clone().unwrap_or_else(|| pod_ip.to_owned()), port)
    } else if let Some(exec) = &probe.exec {
        let command = exec.command.as_deref().unwrap_or_default();
        let program = c
            .image
            .as_deref()
            .and_then(|i| cfg.images.get(repository(i)));
        let named = |p: &PathBuf| {
            command
                .first()
                .and_then(|f| Path::new(f).file_name())
                .is_some_and(|n| Some(n) == p.file_name())
        };
        let (Some(launch), true) = (launch, program.is_some_and(named)) else {
            return Err(unsupported(
                c,
                "has an exec probe whose command is not its image's registered program (there is no image to run it in)",
            ));
        };
        let mut l = launch.clone();
        l.argv = command.iter().skip(1).map(|a| expand(a, &l.env)).collect();
        l.log = format!("{}.probe.", c.name);
        ProbeAction::Exec(Box::new(l))
    } else {
        return Err(unsupported(
            c,
            "has a probe other than httpGet, tcpSocket or exec (grpc probes are not run)",
        ));
    };
    let secs = |v: Option<i32>, default: u64| {
        Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
    };
    let mut period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    if let Some(cap) = cfg.max_probe_period {
        period = period.min(cap);
    }
    let count = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Ok(ProbeSpec {
        action,
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period,
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        failure_threshold: count(probe.failure_threshold, 3),
        success_threshold: count(probe.success_threshold, 1),
    })
}

/// Spark's image convention: no `command`, and args starting with `executor` or `driver`.
fn spark_role(c: &Container) -> Option<&'static str> {
    if c.command.is_some() {
        return None;
    }
    match c.args.as_deref()?.first()?.as_str() {
        "executor" => Some("executor"),
        "driver" => Some("driver"),
        _ => None,
    }
}

/// Whether the container runs Spark's JVMs (Spark's convention, not a registered or no-op
/// image).
fn runs_spark(cfg: &ProcessKubelet, c: &Container) -> bool {
    let repo = c.image.as_deref().map(repository);
    spark_role(c).is_some()
        && !repo.is_some_and(|r| cfg.images.contains_key(r) || cfg.noop_images.contains(r))
}

/// Whether the kubelet can run the container: `Ok(false)` for a host no-op image, an error
/// naming it if it follows no convention the kubelet knows.
fn check_convention(cfg: &ProcessKubelet, c: &Container) -> Result<bool, StartError> {
    let repo = c.image.as_deref().map(repository);
    if repo.is_some_and(|r| cfg.noop_images.contains(r)) {
        return Ok(false);
    }
    let registered = repo.is_some_and(|r| cfg.images.contains_key(r));
    if !registered && spark_role(c).is_none() {
        return Err(unsupported(
            c,
            "follows no convention the process kubelet runs (Spark's image with args [executor] or [driver, ...], an image registered with ProcessKubelet::image, or a host no-op image)",
        ));
    }
    Ok(true)
}

/// Resolves how to run one container: `None` for a host no-op image.
#[allow(clippy::too_many_arguments)]
fn launch(
    cfg: &ProcessKubelet,
    state: &State,
    pod: &Pod,
    c: &Container,
    vols: &HashMap<String, PathBuf>,
    ips: &(String, String),
    dir: &Path,
    log: String,
) -> Result<Option<Launch>, StartError> {
    let repo = c.image.as_deref().map(repository);
    if !check_convention(cfg, c)? {
        return Ok(None);
    }
    let registered = repo.and_then(|r| cfg.images.get(r));
    let mounts = mounts(c, vols)?;
    if runs_spark(cfg, c) {
        map_properties_files(pod, c, vols, &mounts)?;
    }
    let mut env = env(state, pod, c, ips)?;
    let unmapped = env.clone();
    for v in env.values_mut() {
        *v = map_paths(v, &mounts);
    }
    for name in repo
        .and_then(|r| cfg.address_env.get(r))
        .into_iter()
        .flatten()
    {
        env.entry(name.clone()).or_insert_with(|| ips.0.clone());
    }
    env.entry("KUBECONFIG".into())
        .or_insert_with(|| cfg.kubeconfig().display().to_string());
    env.insert("SPARK_HOME".into(), cfg.spark_home.display().to_string());
    if registered.is_none() {
        // The kubelet's options, then the pod's own temp dir (no container has the host's
        // `/tmp`), then the container's own options; last, the pod's hosts file, from which
        // Spark's JVMs resolve cluster names.
        let tmp = format!("-Djava.io.tmpdir={}", dir.join(POD_TMP).display());
        let own = env.get("JAVA_TOOL_OPTIONS").map_or("", String::as_str);
        let opts = dns::java_tool_options(&[&cfg.java_options, &tmp, own], &dir.join(HOSTS_FILE));
        env.insert("JAVA_TOOL_OPTIONS".into(), opts);
    }
    // `$(VAR)` in command and args, from the container's env as written (before paths are
    // mapped: the mapping applies to the expanded words).
    let mut expanded = c.clone();
    for words in [&mut expanded.command, &mut expanded.args]
        .into_iter()
        .flatten()
    {
        for w in words.iter_mut() {
            *w = expand(w, &unmapped);
        }
    }
    let (program, argv) = match (registered, spark_role(c)) {
        (Some(program), _) => registered_command(&expanded, program, &mounts)?,
        (None, Some("driver")) => driver_command(cfg, &env, &expanded, &mounts)?,
        (None, _) => executor_command(cfg, &env)?,
    };
    Ok(Some(Launch {
        program,
        argv,
        env,
        dir: dir.to_owned(),
        log,
    }))
}

/// A container's preStop hook: `httpGet` (to the pod IP unless `host` is set), or `exec` of
/// the container's registered program (by file name, like `command`), with the container's
/// env (`$(VAR)` expanded; paths in the hook's own words are not mapped). Other `exec` commands cannot run here (there is no container image):
/// they are skipped, as a failed hook is by a real kubelet, which then stops the container.
fn pre_stop(
    cfg: &ProcessKubelet,
    c: &Container,
    launch: Option<&Launch>,
    pod_ip: &str,
) -> Option<PreStop> {
    let hook = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
    if let Some(get) = &hook.http_get {
        let port = match &get.port {
            IntOrString::Int(p) => u16::try_from(*p).ok(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }?;
        return Some(PreStop::Http(
            get.host.clone().unwrap_or_else(|| pod_ip.to_owned()),
            port,
            get.path.clone().unwrap_or_else(|| "/".into()),
        ));
    }
    let command = hook.exec.as_ref()?.command.as_ref()?;
    let launch = launch?;
    let program = c
        .image
        .as_deref()
        .and_then(|i| cfg.images.get(repository(i)))?;
    let named = command
        .first()
        .and_then(|f| Path::new(f).file_name())
        .is_some_and(|n| Some(n) == program.file_name());
    if !named {
        tracing::debug!(container = %c.name, ?command, "preStop exec not runnable here: skipped");
        return None;
    }
    let mut l = launch.clone();
    l.argv = command.iter().skip(1).map(|a| expand(a, &l.env)).collect();
    l.log = format!("{}.prestop.", c.name);
    Some(PreStop::Exec(l))
}

/// Resolves everything a pod needs to run (volumes, each container's command, env and
/// probes), starting nothing.
fn prepare(
    cfg: &ProcessKubelet,
    state: &State,
    pod: &Pod,
    key: &Key,
    ips: &(String, String),
) -> Result<PodRun, StartError> {
    let spec = pod.spec.as_ref();
    let inits = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let mains = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    if mains.is_empty() {
        return Err(("UnsupportedContainer", "the pod has no containers".into()));
    }
    // Which convention, before anything is resolved: an unsupported container says so.
    for c in inits.iter().chain(mains) {
        check_convention(cfg, c)?;
    }
    let vols = volumes(cfg, state, pod, key)?;
    let dir = cfg.pod_dir(&key.0, &key.1);
    let now = Instant::now();
    let mut ctrs = Vec::new();
    for (i, (c, init)) in inits
        .iter()
        .map(|c| (c, true))
        .chain(mains.iter().map(|c| (c, false)))
        .enumerate()
    {
        let log = if i == inits.len() {
            String::new()
        } else {
            format!("{}.", c.name)
        };
        let launch = launch(cfg, state, pod, c, &vols, ips, &dir, log)?;
        let probe = |p: &Option<Probe>| -> Result<Option<(Probe, ProbeState)>, StartError> {
            match p {
                Some(p) if !init => {
                    let spec = probe_spec(cfg, c, p, &ips.0, launch.as_ref())?;
                    Ok(Some((p.clone(), ProbeState::new(spec, now))))
                }
                _ => Ok(None),
            }
        };
        let pre_stop = pre_stop(cfg, c, launch.as_ref(), &ips.0);
        ctrs.push(Ctr {
            pre_stop,
            hook: None,
            term_sent: false,
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            init,
            readiness: probe(&c.readiness_probe)?,
            liveness: probe(&c.liveness_probe)?,
            launch,
            child: None,
            started_at: None,
            last_exit: None,
            done: false,
            restarts: 0,
            restart_at: None,
            backoff: BACKOFF_START,
            ready: false,
        });
    }
    let hosts = if inits.iter().chain(mains).any(|c| runs_spark(cfg, c)) {
        let mut h = HostsFile {
            path: dir.join(HOSTS_FILE),
            pod_name: key.1.clone(),
            written: String::new(),
        };
        fs::create_dir_all(&dir)
            .map_err(|e| config_error(format!("pod directory {}: {e}", dir.display())))?;
        h.refresh(&ips.0, &dns::service_addresses(state));
        Some(h)
    } else {
        None
    };
    Ok(PodRun {
        hosts,
        uid: uid(pod),
        pod_ip: ips.0.clone(),
        host_ip: ips.1.clone(),
        restart_policy: spec
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into()),
        ctrs,
        init_at: (!inits.is_empty()).then_some(0),
        kill_at: None,
        failed: None,
        dirty: true,
    })
}

fn set_condition(pod: &mut Pod, type_: &str, ok: bool) {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    let status = if ok { "True" } else { "False" };
    if conds.iter().any(|c| c.type_ == type_ && c.status == status) {
        return;
    }
    conds.retain(|c| c.type_ != type_);
    conds.push(PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(now_time()),
        ..PodCondition::default()
    });
}

fn terminated(code: i32, at: &Time) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: code,
        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
        finished_at: Some(at.clone()),
        ..ContainerStateTerminated::default()
    }
}

fn ctr_status(c: &Ctr) -> ContainerStatus {
    let state = if c.child.is_some() {
        ContainerState {
            running: Some(ContainerStateRunning {
                started_at: c.started_at.clone(),
            }),
            ..ContainerState::default()
        }
    } else if c.restart_at.is_some() {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: None,
            }),
            ..ContainerState::default()
        }
    } else if let Some((code, at)) = &c.last_exit {
        ContainerState {
            terminated: Some(terminated(*code, at)),
            ..ContainerState::default()
        }
    } else {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(
                    if c.init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    }
                    .into(),
                ),
                message: None,
            }),
            ..ContainerState::default()
        }
    };
    let last_state = (c.restarts > 0 || c.restart_at.is_some())
        .then_some(c.last_exit.as_ref())
        .flatten()
        .map(|(code, at)| ContainerState {
            terminated: Some(terminated(*code, at)),
            ..ContainerState::default()
        });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        ready: c.ready && c.child.is_some(),
        restart_count: c.restarts,
        started: Some(c.child.is_some()),
        state: Some(state),
        last_state,
        ..ContainerStatus::default()
    }
}

/// The pod's status from its containers.
fn write_status(pod: &mut Pod, run: &PodRun) {
    let mains: Vec<&Ctr> = run.ctrs.iter().filter(|c| !c.init).collect();
    let initialized = run.init_at.is_none();
    let phase = if run.failed.is_some() {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if mains.iter().all(|c| c.done) {
        if mains
            .iter()
            .all(|c| c.last_exit.as_ref().is_some_and(|(code, _)| *code == 0))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let ready = initialized && mains.iter().all(|c| c.ready && c.child.is_some());
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some(phase.into());
    if st.start_time.is_none() {
        st.start_time = Some(now_time());
    }
    st.pod_ip = Some(run.pod_ip.clone());
    st.host_ip = Some(run.host_ip.clone());
    if let Some(why) = &run.failed {
        st.reason = Some("InitContainerFailed".into());
        st.message = Some(why.clone());
    }
    let inits: Vec<ContainerStatus> = run.ctrs.iter().filter(|c| c.init).map(ctr_status).collect();
    st.init_container_statuses = (!inits.is_empty()).then_some(inits);
    st.container_statuses = Some(mains.iter().map(|c| ctr_status(c)).collect());
    set_condition(pod, "Initialized", initialized);
    set_condition(pod, "ContainersReady", ready);
    set_condition(pod, "Ready", ready);
}

fn fail(pod: &mut Pod, host_ip: &str, reason: &str, message: String) {
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some("Failed".into());
    st.reason = Some(reason.to_owned());
    st.message = Some(message);
    st.host_ip = Some(host_ip.to_owned());
    set_condition(pod, "Ready", false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_never_end_in_0_or_255() {
        let all: std::collections::HashSet<String> =
            (1..=1000).map(|n| nth_address("127.1", n)).collect();
        assert_eq!(all.len(), 1000);
        assert!(
            all.iter()
                .all(|a| !a.ends_with(".0") && !a.ends_with(".255"))
        );
        assert_eq!(nth_address("127.1", 1), "127.1.0.1");
        assert_eq!(nth_address("127.1", 255), "127.1.1.1");
    }

    #[test]
    fn image_repositories_drop_tags_and_digests() {
        assert_eq!(repository("kshuffle-node"), "kshuffle-node");
        assert_eq!(repository("kshuffle-node:0.1"), "kshuffle-node");
        assert_eq!(
            repository("registry:5000/kshuffle/node:0.1"),
            "registry:5000/kshuffle/node"
        );
        assert_eq!(
            repository("registry:5000/kshuffle/node"),
            "registry:5000/kshuffle/node"
        );
        assert_eq!(repository("x/y@sha256:abc"), "x/y");
    }

    #[test]
    fn var_references_expand_as_the_kubelet_does() {
        let vars: BTreeMap<String, String> = [("A", "1"), ("NODE", "node-2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(expand("--node=$(NODE)", &vars), "--node=node-2");
        assert_eq!(expand("$(A)$(A)x", &vars), "11x");
        assert_eq!(expand("$(MISSING) $(A", &vars), "$(MISSING) $(A");
        assert_eq!(expand("$$(A) $5 $", &vars), "$(A) $5 $");
    }

    #[test]
    fn label_and_annotation_field_refs_name_one_key() {
        assert_eq!(
            metadata_key("metadata.labels['spark-app-selector']"),
            Some(("labels", "spark-app-selector"))
        );
        assert_eq!(
            metadata_key("metadata.annotations[\"kshuffle.io/injected\"]"),
            Some(("annotations", "kshuffle.io/injected"))
        );
        for bad in [
            "metadata.labels",
            "metadata.labels[]",
            "metadata.labels['']",
            "metadata.labels['a\"]",
            "metadata.labels[a]",
            "metadata.labels['a'",
            "spec.labels['a']",
        ] {
            assert_eq!(metadata_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn args_map_paths_also_after_a_flag() {
        let mounts = vec![("/var/lib/kshuffle".to_owned(), PathBuf::from("/w/root"))];
        assert_eq!(
            map_arg("--allowed-root=/var/lib/kshuffle", &mounts),
            "--allowed-root=/w/root"
        );
        assert_eq!(map_arg("/var/lib/kshuffle/x", &mounts), "/w/root/x");
        assert_eq!(map_arg("--port=7337", &mounts), "--port=7337");
    }

    #[test]
    fn env_names_from_env_from_are_checked_as_the_kubelet_does() {
        for ok in ["A", "spark.x", "_X-1", "a.b-c_d"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", "a=b", "a/b", "é"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn properties_values_naming_mount_paths_are_mapped() {
        let mounts = vec![(
            "/opt/spark/pod-template".to_owned(),
            PathBuf::from("/w/tpl"),
        )];
        let text = "# /opt/spark/pod-template/x=1\n\
                    spark.kubernetes.executor.podTemplateFile=/opt/spark/pod-template/pod-spec-template.yml\n\
                    spark.app.name=x\r\nlast=/opt/spark/pod-template";
        assert_eq!(
            map_properties(text, &mounts),
            "# /opt/spark/pod-template/x=1\n\
             spark.kubernetes.executor.podTemplateFile=/w/tpl/pod-spec-template.yml\n\
             spark.app.name=x\r\nlast=/w/tpl"
        );
    }

    #[test]
    fn paths_under_mounts_are_mapped() {
        let mounts = vec![
            ("/opt/spark/conf".to_owned(), PathBuf::from("/w/conf")),
            ("/var/data/spark-1".to_owned(), PathBuf::from("/w/d1")),
        ];
        assert_eq!(map_paths("/opt/spark/conf", &mounts), "/w/conf");
        assert_eq!(
            map_paths("/opt/spark/conf/x.properties", &mounts),
            "/w/conf/x.properties"
        );
        assert_eq!(map_paths("/opt/spark/confx", &mounts), "/opt/spark/confx");
        assert_eq!(
            map_paths("/var/data/spark-1,/var/data/spark-2", &mounts),
            "/w/d1,/var/data/spark-2"
        );
        assert_eq!(map_paths("-Dx=1", &mounts), "-Dx=1");
    }
}

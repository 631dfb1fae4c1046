//! The process kubelet: runs the containers of pods bound to the simulated nodes as local
//! processes, instead of only marking pods Running.
//!
//! What it runs: a container following Spark's image convention with args `executor` (and
//! no `command`) starts the JVM Spark's image entrypoint
//! (`resource-managers/kubernetes/docker/src/main/dockerfiles/spark/entrypoint.sh`) would:
//! `java $SPARK_JAVA_OPT_* (by number) -Xms$SPARK_EXECUTOR_MEMORY -Xmx$SPARK_EXECUTOR_MEMORY
//! -cp $SPARK_CONF_DIR:$SPARK_HOME/jars/* org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
//! --driver-url … --executor-id … --cores … --app-id … --hostname $SPARK_EXECUTOR_POD_IP
//! --resourceProfileId … --podName …`, with `SPARK_HOME` the pyspark package of a venv. A
//! container whose image was registered ([`ProcessKubelet::image`], e.g. our daemon's) runs
//! the registered program with the container's args, paths mapped. Any other container, a
//! pod of several containers or with init containers, fails the pod (phase `Failed`, reason `UnsupportedContainer`, a message
//! naming the container), as does env or a volume it cannot resolve
//! (`CreateContainerConfigError`): nothing waits forever.
//!
//! Addresses: node `i` (0-based) is `127.0.1.{i+1}` (`status.hostIP`); each pod gets its own
//! loopback address `127.1.x.y` (`status.podIP`; `hostNetwork` pods get their node's). The
//! whole 127.0.0.0/8 range is local on Linux, so processes bind and reach these directly.
//!
//! Files: one consistent path mapping, no mount namespaces (those need privileges this
//! machine's tests do not have): every volume is a directory under the kubelet's work dir —
//! `emptyDir` per pod, `hostPath` per node, `configMap`/`secret` per pod with one file per key
//! — and env values naming a container mount path (or a path under it, also in
//! comma-separated lists such as `SPARK_LOCAL_DIRS`) are rewritten to that directory.
//!
//! Env: literal values, and `fieldRef` for `metadata.name`, `metadata.namespace`,
//! `metadata.uid`, `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`,
//! `status.hostIP`. `$(VAR)` references are not expanded.
//!
//! Lifecycle: a started pod is `Running` and Ready (probes are not run yet); when its process
//! exits the pod becomes `Succeeded` (exit 0) or `Failed`, with the container's exit code.
//! On deletion the process group gets SIGTERM, then SIGKILL when the grace period is over,
//! and the pod is removed once the process is gone. Every process runs in its own process
//! group and every group is killed when the server stops or is dropped (a failing test
//! included).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    Pod, PodCondition,
};
use tokio::time::Instant;

use super::Shared;
use super::store::{Key, State, now_time};

/// The main class Spark's image runs for `executor`.
const EXECUTOR_MAIN: &str = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend";
/// How often the kubelet looks at pods and processes.
const TICK: Duration = Duration::from_millis(50);

/// Configures the process kubelet ([`super::Builder::process_kubelet`]).
#[derive(Debug, Clone)]
pub struct ProcessKubelet {
    spark_home: PathBuf,
    work_dir: PathBuf,
    java: PathBuf,
    /// Image repository → the local program that is its entrypoint.
    images: BTreeMap<String, PathBuf>,
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
        }
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

    /// Runs `java` instead of `$JAVA_HOME/bin/java` (tests use a script that records what it
    /// was started with).
    pub fn java(mut self, java: impl Into<PathBuf>) -> Self {
        self.java = java.into();
        self
    }

    /// The directory of a pod: its volumes and its container's `stdout`/`stderr`.
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.work_dir.join("pods").join(ns).join(name)
    }
}

/// A container process the kubelet started.
#[derive(Debug)]
struct Proc {
    child: Child,
    uid: String,
    /// When SIGKILL is due, once SIGTERM was sent.
    kill_at: Option<Instant>,
}

/// The processes of running pods, shared with the server handle so Drop can kill them.
#[derive(Debug, Default)]
pub struct Procs(Mutex<HashMap<Key, Proc>>);

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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Proc>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs every process group and reaps the leaders.
    pub fn kill_all(&self) {
        let mut procs = self.lock();
        for (_, mut p) in procs.drain() {
            signal_group(p.child.id(), "KILL");
            let _ = p.child.wait();
        }
    }
}

/// Runs the kubelet until the server stops, then kills every process it started.
pub async fn run(shared: Arc<Shared>, cfg: ProcessKubelet, procs: Arc<Procs>) {
    let mut failed: HashSet<String> = HashSet::new();
    let mut next_ip: u32 = 1;
    loop {
        reconcile(&shared, &cfg, &procs, &mut failed, &mut next_ip);
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    procs.kill_all();
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

fn node_ip(nodes: &[super::Node], name: &str) -> Option<String> {
    let i = nodes.iter().position(|n| n.name == name)?;
    Some(format!("127.0.1.{}", (i % 254) + 1))
}

fn reconcile(
    shared: &Shared,
    cfg: &ProcessKubelet,
    procs: &Procs,
    failed: &mut HashSet<String>,
    next_ip: &mut u32,
) {
    let nodes = shared
        .nodes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let now = Instant::now();
    let mut state = shared.store.lock();
    let mut procs = procs.lock();
    let mut changed = false;

    // Processes that exited, and deletions to carry out.
    let keys: Vec<Key> = procs.keys().cloned().collect();
    for key in keys {
        let Some(p) = procs.get_mut(&key) else {
            continue;
        };
        let tracked = state.pods.get(&key).filter(|t| uid(&t.pod) == p.uid);
        let exited = p.child.try_wait().ok().flatten();
        let deleting = tracked.and_then(|t| t.delete_at);
        match (exited, deleting) {
            (Some(status), _) => {
                // As a container's teardown: whatever the process left in its group goes too.
                signal_group(p.child.id(), "KILL");
                procs.remove(&key);
                if tracked.is_none() {
                    continue;
                }
                if deleting.is_some() {
                    state.remove(&key);
                } else {
                    let code = status.code().unwrap_or(137);
                    state.modify_meta(&key, |t| terminate(&mut t.pod, code));
                }
                changed = true;
            }
            (None, Some((_, deadline))) => match p.kill_at {
                None => {
                    signal_group(p.child.id(), "TERM");
                    p.kill_at = Some(deadline);
                }
                Some(at) if at <= now => signal_group(p.child.id(), "KILL"),
                Some(_) => {}
            },
            (None, None) if tracked.is_none() => {
                // The pod is gone (force-deleted): its process goes at once.
                signal_group(p.child.id(), "KILL");
            }
            (None, None) => {}
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
        let host_ip = node_ip(&nodes, &node).unwrap_or_else(|| "127.0.1.254".into());
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let pod_ip = if host_network {
            host_ip.clone()
        } else {
            let n = *next_ip;
            *next_ip = next_ip.wrapping_add(1);
            nth_address("127.1", u64::from(n))
        };
        let ips = (pod_ip.clone(), host_ip.clone());
        match start(cfg, &state, &pod, &key, &ips) {
            Ok(child) => {
                procs.insert(
                    key.clone(),
                    Proc {
                        child,
                        uid: uid(&pod),
                        kill_at: None,
                    },
                );
                state.modify_meta(&key, |t| running(&mut t.pod, &ips.0, &ips.1));
            }
            Err((reason, message)) => {
                tracing::debug!(pod = %key.1, %reason, %message, "cannot run pod");
                failed.insert(uid(&pod));
                state.modify_meta(&key, |t| fail(&mut t.pod, &host_ip, reason, message));
            }
        }
        changed = true;
    }
    drop(procs);
    drop(state);
    if changed {
        shared.store.changed.notify_one();
    }
}

type StartError = (&'static str, String);

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
                return Err(config_error(format!(
                    "configmap \"{}\" not found (volume {:?})",
                    cm.name, v.name
                )));
            };
            let p = dir.join(&v.name);
            fs::create_dir_all(&p).map_err(io)?;
            for (k, val) in obj["data"].as_object().into_iter().flatten() {
                fs::write(p.join(k), val.as_str().unwrap_or_default()).map_err(io)?;
            }
            p
        } else if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            let obj = state
                .objects
                .get(&(super::Resource::Secrets, key.0.clone(), name.clone()));
            let Some(obj) = obj else {
                return Err(config_error(format!(
                    "secret \"{name}\" not found (volume {:?})",
                    v.name
                )));
            };
            let p = dir.join(&v.name);
            fs::create_dir_all(&p).map_err(io)?;
            for (k, val) in obj["data"].as_object().into_iter().flatten() {
                let bytes = val
                    .as_str()
                    .and_then(super::base64::decode)
                    .unwrap_or_default();
                fs::write(p.join(k), bytes).map_err(io)?;
            }
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

/// The container's env, resolved.
fn env(
    pod: &Pod,
    c: &Container,
    ips: &(String, String),
) -> Result<BTreeMap<String, String>, StartError> {
    let mut out = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                let Some(f) = &from.field_ref else {
                    return Err(config_error(format!(
                        "env {:?}: only fieldRef is supported in valueFrom",
                        e.name
                    )));
                };
                let spec = pod.spec.as_ref();
                let v = match f.field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone(),
                    "metadata.namespace" => pod.metadata.namespace.clone(),
                    "metadata.uid" => pod.metadata.uid.clone(),
                    "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
                    "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
                    "status.podIP" => Some(ips.0.clone()),
                    "status.hostIP" => Some(ips.1.clone()),
                    other => {
                        return Err(config_error(format!(
                            "env {:?}: fieldRef {other:?} is not supported",
                            e.name
                        )));
                    }
                };
                v.unwrap_or_default()
            }
            (Some(v), None) => v.clone(),
            (None, None) => String::new(),
        };
        out.insert(e.name.clone(), value);
    }
    Ok(out)
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

/// Starts the pod's one container.
fn start(
    cfg: &ProcessKubelet,
    state: &State,
    pod: &Pod,
    key: &Key,
    ips: &(String, String),
) -> Result<Child, StartError> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let [c] = containers else {
        return Err((
            "UnsupportedContainer",
            format!(
                "the process kubelet runs pods of exactly one container, this one has {}",
                containers.len()
            ),
        ));
    };
    if spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|i| !i.is_empty())
    {
        return Err((
            "UnsupportedContainer",
            "the process kubelet does not run init containers yet".into(),
        ));
    }
    // Which convention, before anything is resolved: an unsupported container says so.
    let registered = c
        .image
        .as_deref()
        .and_then(|i| cfg.images.get(repository(i)));
    let args = c.args.as_deref().unwrap_or_default();
    let executor = c.command.is_none() && args.first().map(String::as_str) == Some("executor");
    if registered.is_none() && !executor {
        return Err(unsupported(
            c,
            "follows no convention the process kubelet runs (Spark's image with args [executor], or an image registered with ProcessKubelet::image)",
        ));
    }
    let vols = volumes(cfg, state, pod, key)?;
    let mounts = mounts(c, &vols)?;
    let mut env = env(pod, c, ips)?;
    for v in env.values_mut() {
        *v = map_paths(v, &mounts);
    }
    let (program, argv) = match registered {
        Some(program) => registered_command(c, program, &mounts)?,
        None => executor_command(cfg, &env)?,
    };
    let dir = cfg.pod_dir(&key.0, &key.1);
    let io = |e: std::io::Error| config_error(format!("pod directory {}: {e}", dir.display()));
    fs::create_dir_all(&dir).map_err(io)?;
    let stdout = fs::File::create(dir.join("stdout")).map_err(io)?;
    let stderr = fs::File::create(dir.join("stderr")).map_err(io)?;
    let mut cmd = Command::new(&program);
    cmd.args(&argv);
    // The container sees its own env plus what a process needs to find java and a home.
    cmd.env_clear();
    for keep in ["PATH", "HOME", "JAVA_HOME", "LANG", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(&env)
        .env("SPARK_HOME", &cfg.spark_home)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map_err(|e| {
        (
            "StartError",
            format!("cannot start {}: {e}", program.display()),
        )
    })
}

fn set_ready(pod: &mut Pod, ready: bool) {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != "Ready");
    conds.push(PodCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        last_transition_time: Some(now_time()),
        ..PodCondition::default()
    });
}

fn container_status(pod: &Pod, state: ContainerState, ready: bool) -> Vec<ContainerStatus> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready,
            restart_count: 0,
            started: Some(ready),
            state: Some(state.clone()),
            ..ContainerStatus::default()
        })
        .collect()
}

fn running(pod: &mut Pod, pod_ip: &str, host_ip: &str) {
    let statuses = container_status(
        pod,
        ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now_time()),
            }),
            ..ContainerState::default()
        },
        true,
    );
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some("Running".into());
    st.start_time = Some(now_time());
    st.pod_ip = Some(pod_ip.to_owned());
    st.host_ip = Some(host_ip.to_owned());
    st.container_statuses = Some(statuses);
    set_ready(pod, true);
}

fn terminate(pod: &mut Pod, exit_code: i32) {
    let statuses = container_status(
        pod,
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                finished_at: Some(now_time()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
        false,
    );
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some(
        if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        }
        .into(),
    );
    st.container_statuses = Some(statuses);
    set_ready(pod, false);
}

fn fail(pod: &mut Pod, host_ip: &str, reason: &str, message: String) {
    let st = pod.status.get_or_insert_with(Default::default);
    st.phase = Some("Failed".into());
    st.reason = Some(reason.to_owned());
    st.message = Some(message);
    st.host_ip = Some(host_ip.to_owned());
    set_ready(pod, false);
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

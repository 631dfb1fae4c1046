//! The DaemonSet deployment as it would be applied: `kubectl kustomize daemonset/deploy`
//! rendered for real, every object parsed into its k8s-openapi type, and the settings that
//! make the deployment work asserted, together with the Spark side (`deploy/spark/`: the
//! executor pod template and the `spark-submit` flags), which must agree with the DaemonSet
//! on the port, the shuffle root and the user.
//!
//! No cluster is involved: this pins what the YAML says (why each setting is there is in
//! `daemonset/README.md`). The real `kshuffle-node` binary is run twice: it must parse the
//! DaemonSet's args and env, and answer the probes when started with them. The service
//! itself is tested in `spark_node.rs` and the crate's other tests.
//!
//! Needs `kubectl` (kustomize is built in and works offline); `KUBECTL` overrides the path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shuffle/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, ServiceAccount, Volume};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

const NAMESPACE: &str = "kshuffle";
const DAEMON_CONTAINER: &str = "kshuffle-node";
/// Spark's image user (`spark_uid` in Spark's Dockerfile).
const SPARK_UID: i64 = 185;

// === rendering ===

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubectl kustomize daemonset/deploy`, split into documents.
///
/// # Panics
/// With a clear message when kubectl is missing or the base does not render.
fn render() -> Vec<Value> {
    kshuffle_testkit::kustomize::render(&deploy_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every object of the base, typed.
struct Base {
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    priority_class: PriorityClass,
    daemonset: DaemonSet,
}

impl Base {
    fn load() -> Base {
        let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for doc in render() {
            let kind = doc["kind"]
                .as_str()
                .expect("every object has a kind")
                .to_owned();
            by_kind.entry(kind).or_default().push(doc);
        }
        let kinds: BTreeSet<&str> = by_kind.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet",
                "Namespace",
                "PriorityClass",
                "ServiceAccount",
            ]),
            "the base renders exactly these kinds"
        );
        let mut one = |kind: &str| -> Value {
            let mut docs = by_kind.remove(kind).unwrap();
            assert_eq!(docs.len(), 1, "exactly one {kind}");
            docs.pop().unwrap()
        };
        Base {
            namespace: typed("Namespace", one("Namespace")),
            service_account: typed("ServiceAccount", one("ServiceAccount")),
            cluster_role: typed("ClusterRole", one("ClusterRole")),
            binding: typed("ClusterRoleBinding", one("ClusterRoleBinding")),
            priority_class: typed("PriorityClass", one("PriorityClass")),
            daemonset: typed("DaemonSet", one("DaemonSet")),
        }
    }

    fn pod_spec(&self) -> &PodSpec {
        self.daemonset.spec.template.spec.as_ref().unwrap()
    }

    fn daemon(&self) -> &Container {
        let containers = &self.pod_spec().containers;
        assert_eq!(containers.len(), 1, "one container: the service");
        let c = &containers[0];
        assert_eq!(c.name, DAEMON_CONTAINER);
        c
    }

    /// The value of `--name=value` in the daemon's args (the only form the manifests use).
    fn arg(&self, name: &str) -> String {
        let prefix = format!("--{name}=");
        let found: Vec<&String> = self
            .daemon()
            .args
            .iter()
            .flatten()
            .filter(|a| a.starts_with(&prefix))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one --{name}=… in {:?}",
            self.daemon().args
        );
        found[0][prefix.len()..].to_owned()
    }

    fn container_port(&self, name: &str) -> i32 {
        let ports = self.daemon().ports.as_ref().unwrap();
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no container port named {name} in {ports:?}"))
            .container_port
    }

    fn volume(&self, name: &str) -> &Volume {
        volume(self.pod_spec(), name)
    }

    fn mount_path(&self, volume: &str) -> String {
        mount_path(self.daemon(), volume)
    }
}

/// Parses `v` as a `T` and checks that nothing was lost: serde skips fields a type does not
/// have, so a misspelt field (`readOnlyRootFileSystem`) would otherwise vanish silently.
fn typed<T>(kind: &str, v: Value) -> T
where
    T: k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize,
{
    let parsed: T =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}"));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        back, v,
        "{kind}: a field is not part of the type (misspelt or misplaced?)"
    );
    parsed
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path(container: &Container, volume: &str) -> String {
    let mounts: Vec<_> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == volume)
        .collect();
    assert_eq!(mounts.len(), 1, "{} mounts {volume} once", container.name);
    assert_ne!(
        mounts[0].read_only,
        Some(true),
        "{volume} is written through"
    );
    mounts[0].mount_path.clone()
}

fn seconds(duration: &str) -> i64 {
    let secs = duration
        .strip_suffix('s')
        .unwrap_or_else(|| panic!("{duration:?}: the manifests give durations in seconds"));
    secs.parse().unwrap()
}

// === the Spark side ===

/// The executor pod template.
fn executor_template() -> Pod {
    let path = deploy_dir().join("spark/executor-pod-template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let value: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    typed("the executor pod template", value)
}

/// The `--conf key=value` lines of `spark-submit.flags`.
fn spark_flags() -> BTreeMap<String, String> {
    let path = deploy_dir().join("spark/spark-submit.flags");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut flags = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let conf = line
            .strip_prefix("--conf ")
            .unwrap_or_else(|| panic!("{line:?}: every flag is `--conf key=value`"));
        let (key, value) = conf
            .split_once('=')
            .unwrap_or_else(|| panic!("{line:?}: no `=`"));
        assert!(
            !value.contains(char::is_whitespace),
            "{line:?}: values are used unquoted"
        );
        let old = flags.insert(key.to_owned(), value.to_owned());
        assert!(old.is_none(), "{key} is set twice");
    }
    flags
}

// === tests ===

#[test]
fn objects_live_in_the_kshuffle_namespace_which_allows_host_access() {
    let base = Base::load();
    assert_eq!(base.namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let labels = base.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "hostNetwork and hostPath need the privileged Pod Security level"
    );
    assert_eq!(
        base.service_account.metadata.namespace.as_deref(),
        Some(NAMESPACE)
    );
    assert_eq!(
        base.daemonset.metadata.namespace.as_deref(),
        Some(NAMESPACE)
    );
    assert_eq!(
        base.pod_spec().service_account_name,
        base.service_account.metadata.name,
        "the DaemonSet runs as the bound service account"
    );
    assert_ne!(
        base.pod_spec().automount_service_account_token,
        Some(false),
        "the driver watch needs the token"
    );
}

#[test]
fn rbac_grants_only_get_list_watch_on_pods() {
    let base = Base::load();
    let rules = base.cluster_role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]));
    assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    assert!(base.cluster_role.aggregation_rule.is_none());

    assert_eq!(base.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&base.binding.role_ref.name),
        base.cluster_role.metadata.name.as_ref()
    );
    let subjects = base.binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        base.service_account.metadata.name.as_ref()
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn daemon_serves_the_hostpath_on_the_node_network() {
    let base = Base::load();
    let spec = base.pod_spec();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));

    let port: i32 = base.arg("port").parse().unwrap();
    assert_eq!(port, 7337, "Spark's default spark.shuffle.service.port");
    assert_eq!(base.container_port("shuffle"), port);

    let root = base.arg("allowed-root");
    let host = base.volume("shuffle-root").host_path.clone().unwrap();
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_eq!(host.path, root, "the hostPath is the root itself");
    assert_eq!(
        base.mount_path("shuffle-root"),
        root,
        "mounted at the same path"
    );

    let state = base.arg("state-dir");
    let state_host = base.volume("state").host_path.clone().unwrap();
    assert_eq!(state_host.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_eq!(base.mount_path("state"), state);
    assert_eq!(state_host.path, state);
    assert!(
        !Path::new(&state).starts_with(&root) && !Path::new(&root).starts_with(&state),
        "the state dir ({state}) must not overlap the root ({root})"
    );

    let image = base.daemon().image.clone().unwrap();
    assert_eq!(
        image, "ghcr.io/kshuffle/kshuffle-node:0.1.0",
        "kustomize `images:` replaces the placeholder"
    );
}

#[test]
fn probes_hit_the_admin_port() {
    let base = Base::load();
    let admin: i32 = base.arg("admin-port").parse().unwrap();
    assert_eq!(base.container_port("admin"), admin);
    let daemon = base.daemon();
    for (what, probe, path) in [
        ("readiness", &daemon.readiness_probe, "/readyz"),
        ("liveness", &daemon.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .unwrap_or_else(|| panic!("{what} probe is an HTTP GET"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        let port = match get.port {
            IntOrString::Int(n) => n,
            IntOrString::String(name) => base.container_port(&name),
        };
        assert_eq!(port, admin, "{what} probe on the admin port");
    }
}

#[test]
fn containers_run_unprivileged() {
    let base = Base::load();
    let spec = base.pod_spec();
    let pod = spec.security_context.clone().unwrap();
    assert_eq!(pod.run_as_non_root, Some(true));
    assert_eq!(pod.run_as_user, Some(SPARK_UID), "the executors' user");
    assert_eq!(pod.run_as_group, Some(SPARK_UID));
    assert_eq!(
        pod.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );

    let sc = base.daemon().security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert_ne!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "no capability added"
    );

    // The one root step: hand the two host directories (created root-owned by the kubelet)
    // to the service's user, with only CHOWN and FOWNER.
    let inits = spec.init_containers.clone().unwrap_or_default();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    let sc = init.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    assert_eq!(
        added,
        BTreeSet::from(["CHOWN".to_owned(), "FOWNER".to_owned()])
    );
    let script = init.command.clone().unwrap_or_default().join(" ");
    let root = base.arg("allowed-root");
    let state = base.arg("state-dir");
    assert!(
        script.contains(&format!("chown {SPARK_UID}:{SPARK_UID} {root} {state}")),
        "the init container hands {root} and {state} to {SPARK_UID}: {script}"
    );
    assert!(!script.contains("-R"), "never recursive: {script}");
    assert_eq!(mount_path(init, "shuffle-root"), root);
    assert_eq!(mount_path(init, "state"), state);
}

#[test]
fn scheduling_updates_and_termination() {
    let base = Base::load();
    let spec = base.pod_spec();

    let tolerations = spec.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint, so it runs on every node Spark may use: {tolerations:?}"
    );

    assert_eq!(
        spec.priority_class_name, base.priority_class.metadata.name,
        "uses the PriorityClass of the base"
    );
    assert_eq!(
        base.priority_class.value,
        Some(1_000_000_000),
        "highest non-system value"
    );
    assert_ne!(base.priority_class.global_default, Some(true));

    let strategy = base.daemonset.spec.update_strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "two pods of a node cannot share its port"
    );

    let grace = seconds(&base.arg("shutdown-grace"));
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(grace + 5),
        "--shutdown-grace plus 5 s to flush and exit before SIGKILL"
    );

    let resources = base.daemon().resources.clone().unwrap();
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    for key in ["cpu", "memory"] {
        assert!(requests.contains_key(key), "requests.{key}");
        assert!(limits.contains_key(key), "limits.{key}");
    }
    assert_eq!(requests["memory"].0, "256Mi");
    assert_eq!(limits["memory"].0, "512Mi");
}

#[test]
fn environment_names_the_node_and_watches_every_namespace() {
    let base = Base::load();
    let env = base.daemon().env.clone().unwrap_or_default();
    let get = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    let node = get("NODE_NAME").value_from.unwrap().field_ref.unwrap();
    assert_eq!(node.field_path, "spec.nodeName");
    assert!(get("RUST_LOG").value.is_some_and(|v| !v.is_empty()));
    assert_eq!(
        get("KSHUFFLE_WATCH_NAMESPACE").value.unwrap_or_default(),
        "",
        "empty: driver pods of every namespace"
    );
    assert_eq!(
        get("KSHUFFLE_AUTH_FROM_PODS").value.as_deref(),
        Some("false"),
        "spark.authenticate from executor pods is opt-in"
    );
}

#[test]
fn executor_template_mounts_the_daemon_root_on_the_host_network() {
    let base = Base::load();
    let root = base.arg("allowed-root");
    let flags = spark_flags();
    let pod = executor_template();
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.host_network,
        Some(true),
        "executors address the service at their host"
    );
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.security_context.as_ref().and_then(|s| s.run_as_user),
        base.pod_spec()
            .security_context
            .clone()
            .unwrap()
            .run_as_user,
        "executors and the service run as one user"
    );

    // LocalDirsFeatureStep: mounts named spark-local-dir-* are Spark's local dirs.
    let host = volume(&spec, "spark-local-dir-1")
        .host_path
        .clone()
        .unwrap();
    assert_eq!(host.path, root, "the daemon's hostPath");
    assert_eq!(
        host.type_.as_deref(),
        Some("Directory"),
        "never created by an executor"
    );

    let name = &flags["spark.kubernetes.executor.podTemplateContainerName"];
    assert_eq!(spec.containers.len(), 1);
    let executor = &spec.containers[0];
    assert_eq!(&executor.name, name);
    assert_eq!(
        mount_path(executor, "spark-local-dir-1"),
        root,
        "mounted at the same path as in the daemon, so registered dirs mean the same files"
    );
    let other_local_dirs: Vec<_> = executor
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name.starts_with("spark-local-dir-") && m.name != "spark-local-dir-1")
        .collect();
    assert!(
        other_local_dirs.is_empty(),
        "one local dir: {other_local_dirs:?}"
    );
}

#[test]
fn spark_submit_flags_match_the_daemonset() {
    let base = Base::load();
    let flags = spark_flags();
    let expected_keys = BTreeSet::from([
        "spark.blockManager.port",
        "spark.dynamicAllocation.enabled",
        "spark.dynamicAllocation.shuffleTracking.enabled",
        "spark.kubernetes.executor.podTemplateContainerName",
        "spark.kubernetes.executor.podTemplateFile",
        "spark.shuffle.readHostLocalDisk",
        "spark.shuffle.service.enabled",
        "spark.shuffle.service.fetch.rdd.enabled",
        "spark.shuffle.service.port",
    ]);
    assert_eq!(
        flags.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected_keys
    );
    let flag = |k: &str| flags[k].as_str();
    assert_eq!(flag("spark.shuffle.service.enabled"), "true");
    assert_eq!(flag("spark.shuffle.service.port"), base.arg("port"));
    assert_eq!(flag("spark.dynamicAllocation.enabled"), "true");
    assert_eq!(
        flag("spark.dynamicAllocation.shuffleTracking.enabled"),
        "false"
    );
    assert_eq!(
        flag("spark.shuffle.service.fetch.rdd.enabled"),
        base.arg("rdd-fetch-enabled"),
        "the service serves RDD blocks exactly when Spark expects it to"
    );
    assert_eq!(flag("spark.shuffle.readHostLocalDisk"), "true");
    assert_eq!(
        flag("spark.blockManager.port"),
        "0",
        "no host port per executor"
    );
    let template = Path::new(flag("spark.kubernetes.executor.podTemplateFile"));
    assert_eq!(
        template.file_name().and_then(|n| n.to_str()),
        Some("executor-pod-template.yaml")
    );
}

/// `kshuffle-node <the DaemonSet's args> --help` with the DaemonSet's `KSHUFFLE_*` env: clap
/// parses (and validates) every argument before it reaches `--help`, so this exits 0 only if
/// the real binary accepts each flag and value the manifest gives it. Nothing is started.
fn node_accepts(args: &[String], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KSHUFFLE_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).arg("--help").envs(env.iter().cloned());
    cmd.output().unwrap()
}

#[test]
fn the_node_binary_accepts_the_daemonset_args_and_env() {
    let base = Base::load();
    let daemon = base.daemon();
    assert_eq!(
        daemon.command.as_deref(),
        Some(&["kshuffle-node".to_owned()][..])
    );
    let args = daemon.args.clone().unwrap_or_default();
    let env: Vec<(String, String)> = daemon
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("KSHUFFLE_"))
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert!(!env.is_empty());
    let out = node_accepts(&args, &env);
    assert!(
        out.status.success(),
        "kshuffle-node refuses the DaemonSet's args {args:?} / env {env:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The check can fail: an unknown flag or a bad value is refused before `--help`.
    let mut bad = args.clone();
    bad.push("--no-such-flag".to_owned());
    assert!(!node_accepts(&bad, &env).status.success());
    let bad: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--shutdown-grace=") {
                "--shutdown-grace=soon".to_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    assert!(!node_accepts(&bad, &env).status.success());
}

/// `container`'s args for a run on this machine: the host paths moved into `tmp`, ports
/// ephemeral on loopback, no API server.
fn local_args(container: &Container, tmp: &Path) -> Vec<String> {
    let (root, state) = (tmp.join("root"), tmp.join("state"));
    container
        .args
        .iter()
        .flatten()
        .map(|a| match a.split_once('=') {
            Some(("--allowed-root", _)) => format!("--allowed-root={}", root.display()),
            Some(("--state-dir", _)) => format!("--state-dir={}", state.display()),
            Some(("--port", _)) => "--port=0".to_owned(),
            Some(("--admin-port", _)) => "--admin-port=0".to_owned(),
            _ => a.clone(),
        })
        .chain(
            [
                "--bind=127.0.0.1",
                "--admin-bind=127.0.0.1",
                "--driver-watch=false",
            ]
            .map(str::to_owned),
        )
        .collect()
}

/// The probe paths answer 200 on the real binary's admin port when it runs with the
/// DaemonSet's args (host paths moved into a temp dir, ports ephemeral on loopback, no API
/// server), and SIGTERM ends it well within `terminationGracePeriodSeconds`.
#[test]
fn probe_paths_answer_on_the_real_binary_started_with_the_daemonset_args() {
    use std::io::{Read as _, Write as _};

    let base = Base::load();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
    cmd.args(local_args(base.daemon(), tmp.path()))
        .env_remove("RUST_LOG");
    let daemon = common::Daemon::start_command(cmd);
    let admin: std::net::SocketAddr = daemon
        .events()
        .iter()
        .find(|e| e.message == "listening")
        .and_then(|e| e.str_field("admin_addr"))
        .expect("\"listening\" names admin_addr")
        .parse()
        .unwrap();
    let probes = [
        base.daemon().readiness_probe.clone().unwrap(),
        base.daemon().liveness_probe.clone().unwrap(),
    ];
    for probe in probes {
        let path = probe.http_get.unwrap().path.unwrap();
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "GET {path} on the admin port: {response}"
        );
    }
    // Daemon::stop waits (bounded) for a clean exit 0 after SIGTERM.
    daemon.stop();
}

/// `kubectl kustomize daemonset/examples/tls`: the base with the `tls` component. It adds the
/// Secret `kshuffle-tls` (readable by the service's group only), mounted read-only and not by
/// subPath (so renewals reach the files), and the two env vars naming its files; nothing of
/// the base is lost. The real binary, started with those args and env (the Secret's files
/// made here), serves TLS.
#[test]
fn the_tls_component_mounts_the_secret_and_the_binary_serves_tls_from_it() {
    const MOUNT: &str = "/etc/kshuffle/tls";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tls");
    let docs = kshuffle_testkit::kustomize::render(&dir).unwrap_or_else(|e| panic!("{e}"));
    let rendered = kshuffle_testkit::kustomize::one(&docs, "DaemonSet").unwrap();
    let with_tls: DaemonSet = typed("DaemonSet", rendered.clone());
    let base = Base::load();
    let spec = with_tls.spec.template.spec.as_ref().unwrap();

    let secret = volume(spec, "tls")
        .secret
        .as_ref()
        .expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("kshuffle-tls"));
    assert_eq!(secret.default_mode, Some(0o440));
    let security = spec.security_context.as_ref().unwrap();
    assert_eq!(
        security.fs_group,
        Some(SPARK_UID),
        "the key is readable by group 185"
    );
    assert_eq!(security.run_as_user, Some(SPARK_UID));
    assert_eq!(security.run_as_non_root, Some(true));

    let daemon = &spec.containers[0];
    assert_eq!(daemon.name, DAEMON_CONTAINER);
    let mount = daemon
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "tls")
        .expect("the tls volume is mounted");
    assert_eq!(mount.mount_path, MOUNT);
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.sub_path, None, "a subPath mount never sees a renewal");
    let env = |name: &str| {
        daemon
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(env("KSHUFFLE_TLS_CERT_FILE"), format!("{MOUNT}/tls.crt"));
    assert_eq!(env("KSHUFFLE_TLS_KEY_FILE"), format!("{MOUNT}/tls.key"));

    // The base is all still there.
    assert_eq!(daemon.args, base.daemon().args);
    for v in base.pod_spec().volumes.iter().flatten() {
        assert_eq!(volume(spec, &v.name), v);
    }
    for e in base.daemon().env.iter().flatten() {
        assert!(daemon.env.iter().flatten().any(|x| x == e), "{e:?} lost");
    }

    // The real binary with the component's env: the Secret's two files, made here.
    let tmp = tempfile::tempdir().unwrap();
    let secret_dir = tmp.path().join("tls");
    common::TestCertificate::create(&secret_dir, &["localhost"]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kshuffle-node"));
    cmd.args(local_args(daemon, tmp.path()))
        .env_remove("RUST_LOG");
    for e in daemon.env.iter().flatten() {
        if let Some(file) = e.value.as_deref().and_then(|v| v.strip_prefix(MOUNT)) {
            cmd.env(&e.name, format!("{}{file}", secret_dir.display()));
        }
    }
    let node = common::Daemon::start_command(cmd);
    let listening = node
        .events()
        .into_iter()
        .find(|e| e.message == "listening")
        .expect("listening");
    assert_eq!(
        listening.fields.get("tls"),
        Some(&Value::Bool(true)),
        "{listening:?}"
    );
    node.stop();
}

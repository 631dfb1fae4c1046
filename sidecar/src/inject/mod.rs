//! Pure injection logic: a Spark executor [`Pod`] and a [`Config`] in, a [`Decision`] out.
//!
//! No I/O and no kube client: the HTTP layer ([`crate::admission`]) decodes the
//! `AdmissionReview`, calls [`mutate`], and wraps the result. Every rule below is tested from
//! captured pod bodies in `sidecar/tests/inject.rs`.
//!
//! What an injected pod gets (all in one JSONPatch, applied to the pod as the API server sent it):
//! - a regular container (not a native sidecar: see `sidecar/README.md`) named [`Config::container_name`]
//!   running `kshuffle-sidecar serve`, listening on Spark's shuffle port in the pod's network
//!   namespace, with every `spark-local-dir-N` volume of the executor container mounted at the
//!   **same path** (so the dirs an executor registers name the same files for the daemon) and
//!   given as `--allowed-root`;
//! - if the executor container mounts no `spark-local-dir-N` volume (not what Spark's
//!   `LocalDirsFeatureStep` produces, but a hand-made pod can), an emptyDir `spark-local-dir-1`
//!   at [`Config::fallback_local_dir`] mounted in both containers, and `SPARK_LOCAL_DIRS` set on
//!   the executor container;
//! - an emptyDir for the daemon's registry journal ([`STATE_VOLUME`]);
//! - `terminationGracePeriodSeconds` raised to [`Config::grace_period_seconds`] (never lowered);
//! - the annotation [`ANNOTATION_INJECTED`], which makes injection idempotent;
//! - the name of the driver pod the executor pod is owned by, as [`ENV_DRIVER_POD`]; or, in
//!   client mode (no `ownerReference` to a Pod), the driver's RPC endpoint as
//!   [`ENV_DRIVER_URL`], copied from the executor's [`ENV_SPARK_DRIVER_URL`]: with no driver
//!   pod to list, the sidecar learns that the application ended from it.
//!
//! Invariant: a pod is either patched completely or not at all; anything that could make the
//! patch unsafe ([`Unsafe`]) leaves the pod unchanged.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// Label Spark puts on every pod it creates: `driver` or `executor`.
pub const LABEL_SPARK_ROLE: &str = "spark-role";
/// Label holding the application id (`spark-<hex>` on Kubernetes) on Spark's pods.
pub const LABEL_APP_ID: &str = "spark-app-selector";
/// Pod label that opts a pod in (`true`) or out (`false`); it wins over the namespace label.
pub const LABEL_INJECT: &str = "kshuffle.io/inject";
/// Annotation set on injected pods (value: this crate's version); its presence means "done".
pub const ANNOTATION_INJECTED: &str = "kshuffle.io/injected";
/// `kubectl logs` and `exec` pick this container when none is named.
pub const ANNOTATION_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Prefix of the volumes Spark uses as local dirs (`LocalDirsFeatureStep`).
pub const LOCAL_DIR_VOLUME_PREFIX: &str = "spark-local-dir-";
/// The emptyDir holding the sidecar's registry journal.
pub const STATE_VOLUME: &str = "kshuffle-state";
/// Where the sidecar's registry journal lives (`--state-dir`).
pub const STATE_DIR: &str = "/var/lib/kshuffle";
/// The Secret volume of the sidecar's TLS certificate (with [`Config::tls_secret`]).
pub const TLS_VOLUME: &str = "kshuffle-tls";
/// Where the sidecar mounts [`TLS_VOLUME`]: `tls.crt` and `tls.key` of a `kubernetes.io/tls`
/// Secret.
pub const TLS_DIR: &str = "/etc/kshuffle/tls";
/// Name of Spark's executor container when no pod template names it otherwise.
pub const SPARK_EXECUTOR_CONTAINER: &str = "spark-kubernetes-executor";
/// Env var Spark sets on the executor container (`BasicExecutorFeatureStep`).
pub const ENV_EXECUTOR_ID: &str = "SPARK_EXECUTOR_ID";
/// Env var Spark reads its local dirs from (`LocalDirsFeatureStep` sets it).
pub const ENV_LOCAL_DIRS: &str = "SPARK_LOCAL_DIRS";
/// Env var holding the per-application secret Spark generates when `spark.authenticate` is on
/// and no secret file is configured (`BasicExecutorFeatureStep`); copied into the sidecar.
pub const ENV_AUTH_SECRET: &str = "_SPARK_AUTH_SECRET";
/// Where Kubernetes mounts the service-account token; copied from the executor container, because
/// the ServiceAccount admission plugin runs before webhooks and never sees our container.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Env vars of the sidecar (read by `kshuffle-sidecar serve`).
pub const ENV_APP_ID: &str = "KSHUFFLE_APP_ID";
/// Namespace of the pod, from the downward API.
pub const ENV_POD_NAMESPACE: &str = "KSHUFFLE_POD_NAMESPACE";
/// Name of the pod, from the downward API.
pub const ENV_POD_NAME: &str = "KSHUFFLE_POD_NAME";
/// Env var Spark sets on the executor container: the driver's RPC endpoint
/// (`spark://CoarseGrainedScheduler@host:port`, `BasicExecutorFeatureStep`).
pub const ENV_SPARK_DRIVER_URL: &str = "SPARK_DRIVER_URL";
/// Name of the driver pod, from the executor pod's `ownerReference` to a Pod (cluster mode, or
/// client mode with `spark.kubernetes.driver.pod.name`, where that pod need not carry Spark's
/// driver labels): `serve` looks it up by name when no labelled driver pod is listed.
pub const ENV_DRIVER_POD: &str = "KSHUFFLE_DRIVER_POD";
/// The sidecar's copy of [`ENV_SPARK_DRIVER_URL`], given only to pods without a driver pod
/// (client mode: no `ownerReference` to a Pod): `serve` then asks the driver's endpoint
/// whether the application still runs, as there is no driver pod to list.
pub const ENV_DRIVER_URL: &str = "KSHUFFLE_DRIVER_URL";

/// How injected containers look. Built once from the webhook's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Image of the sidecar (it must contain the `kshuffle-sidecar` binary as entrypoint).
    pub image: String,
    /// `imagePullPolicy` of the sidecar; `None` leaves the API server's default.
    pub image_pull_policy: Option<String>,
    /// Name of the injected container.
    pub container_name: String,
    /// Spark's `spark.shuffle.service.port`: the sidecar listens there in the pod's network.
    pub shuffle_port: u16,
    /// The daemon's admin HTTP port (probes, metrics).
    pub admin_port: u16,
    /// Requests and limits of the sidecar container.
    pub resources: ResourceRequirements,
    /// Minimum `terminationGracePeriodSeconds` of injected pods: how long the sidecar may keep
    /// serving after the pod is asked to terminate.
    pub grace_period_seconds: i64,
    /// Mount path of the emptyDir added when the executor has no `spark-local-dir-N` volume.
    pub fallback_local_dir: String,
    /// `runAsUser`/`runAsGroup` of the sidecar when neither the executor container nor the pod
    /// sets one: Spark's image runs as 185:185, and the sidecar must be able to delete what the
    /// executor writes.
    pub default_run_as: i64,
    /// `--log-level` of the sidecar.
    pub log_level: String,
    /// A `kubernetes.io/tls` Secret, in each executor pod's namespace, whose certificate the
    /// sidecar serves TLS with (Spark 4's `spark.ssl.rpc.enabled`); `None`: no TLS.
    pub tls_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image: "ghcr.io/kshuffle/kshuffle-sidecar:latest".to_owned(),
            image_pull_policy: None,
            container_name: "kshuffle".to_owned(),
            shuffle_port: 7337,
            admin_port: 7338,
            resources: ResourceRequirements::default(),
            grace_period_seconds: 3600,
            fallback_local_dir: "/var/data/kshuffle".to_owned(),
            default_run_as: 185,
            log_level: "info".to_owned(),
            tls_secret: None,
        }
    }
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit with this patch.
    Inject(Patch),
    /// Admit unchanged: the pod is not ours to touch (expected, logged at debug).
    Skip(Skip),
    /// Admit unchanged: the pod asked for injection but cannot be patched safely (logged as a warning).
    Unsafe(Unsafe),
}

/// Why a pod is admitted unchanged, as expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// No `spark-role=executor` label.
    #[error("not a Spark executor pod (no label spark-role=executor)")]
    NotExecutor,
    /// The pod label `kshuffle.io/inject=false`.
    #[error("opted out by the pod label kshuffle.io/inject=false")]
    OptedOut,
    /// Already carries the injection annotation.
    #[error("already injected")]
    AlreadyInjected,
}

/// Why a pod that wants the sidecar is admitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// The pod has no `spark-app-selector` label: the sidecar could not tell its driver.
    #[error("pod has no {LABEL_APP_ID} label")]
    NoAppId,
    /// No container looks like Spark's executor.
    #[error(
        "no executor container (named {SPARK_EXECUTOR_CONTAINER} or with env {ENV_EXECUTOR_ID})"
    )]
    NoExecutorContainer,
    /// A container or volume already has a name the injection would add.
    #[error("pod already has a {what} named {name:?} that was not injected by kshuffle")]
    NameTaken {
        /// `container` or `volume`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Some container already declares a port the sidecar listens on.
    #[error("container {container:?} already declares port {port}")]
    PortTaken {
        /// The container.
        container: String,
        /// The port.
        port: u16,
    },
    /// `hostNetwork: true`: the sidecar would bind the node's shuffle port (the DaemonSet's).
    #[error(
        "pod uses hostNetwork: the sidecar would bind the node's port (use the DaemonSet mode)"
    )]
    HostNetwork,
    /// No `spark-local-dir-N` mount, and `SPARK_LOCAL_DIRS` points somewhere we cannot share.
    #[error(
        "executor sets {ENV_LOCAL_DIRS} without spark-local-dir-N volumes: its dirs cannot be shared"
    )]
    UnsharedLocalDirs,
}

impl Unsafe {
    /// Short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoAppId => "no_app_id",
            Self::NoExecutorContainer => "no_executor_container",
            Self::NameTaken { .. } => "name_taken",
            Self::PortTaken { .. } => "port_taken",
            Self::HostNetwork => "host_network",
            Self::UnsharedLocalDirs => "unshared_local_dirs",
        }
    }
}

/// Decides what to do with `pod` and, when injecting, builds the JSONPatch.
///
/// The namespace opt-in is the API server's job (the webhook's `namespaceSelector`): this
/// function sees only pods the configuration sent it, and re-checks what the pod itself says
/// (`spark-role`, the opt-out label, the injection marker).
pub fn mutate(pod: &Pod, config: &Config) -> Decision {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    if label(LABEL_SPARK_ROLE) != Some("executor") {
        return Decision::Skip(Skip::NotExecutor);
    }
    if label(LABEL_INJECT) == Some("false") {
        return Decision::Skip(Skip::OptedOut);
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(ANNOTATION_INJECTED)) {
        return Decision::Skip(Skip::AlreadyInjected);
    }
    match plan(pod, config) {
        Ok(patch) => Decision::Inject(patch),
        Err(reason) => Decision::Unsafe(reason),
    }
}

// === planning ===

/// Everything checked and built before one patch operation is emitted.
fn plan(pod: &Pod, config: &Config) -> Result<Patch, Unsafe> {
    let labels = pod.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(LABEL_APP_ID))
        .is_none_or(String::is_empty)
    {
        return Err(Unsafe::NoAppId);
    }
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    if spec.host_network == Some(true) {
        return Err(Unsafe::HostNetwork);
    }
    check_names_and_ports(spec, config)?;
    let (exec_index, exec) = executor_container(spec).ok_or(Unsafe::NoExecutorContainer)?;

    let mut local_mounts: Vec<VolumeMount> = exec
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name.starts_with(LOCAL_DIR_VOLUME_PREFIX))
        // Same volume, same path, same sub-path: the sidecar must see exactly the files the
        // executor sees at that path. Writable even if the executor's is not (cleanup deletes).
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            sub_path: m.sub_path.clone(),
            sub_path_expr: m.sub_path_expr.clone(),
            ..VolumeMount::default()
        })
        .collect();

    let mut ops = Vec::new();
    let mut new_volumes = Vec::new();
    if local_mounts.is_empty() {
        // A pod Spark did not shape (Spark always mounts spark-local-dir-N): share a fresh
        // emptyDir, unless the executor already points its local dirs elsewhere.
        let has_env = exec.env.iter().flatten().any(|e| e.name == ENV_LOCAL_DIRS);
        let name = format!("{LOCAL_DIR_VOLUME_PREFIX}1");
        if has_env {
            return Err(Unsafe::UnsharedLocalDirs);
        }
        if spec.volumes.iter().flatten().any(|v| v.name == name) {
            return Err(Unsafe::NameTaken {
                what: "volume",
                name,
            });
        }
        let mount = VolumeMount {
            name: name.clone(),
            mount_path: config.fallback_local_dir.clone(),
            ..VolumeMount::default()
        };
        new_volumes.push(empty_dir(&name));
        let exec_path = ["spec", "containers", &exec_index.to_string()];
        ops.push(append(
            &exec_path,
            "volumeMounts",
            exec.volume_mounts.is_some(),
            to_value(&mount),
        ));
        let env = EnvVar {
            name: ENV_LOCAL_DIRS.to_owned(),
            value: Some(config.fallback_local_dir.clone()),
            ..EnvVar::default()
        };
        ops.push(append(
            &exec_path,
            "env",
            exec.env.is_some(),
            to_value(&env),
        ));
        local_mounts.push(mount);
    }
    new_volumes.push(empty_dir(STATE_VOLUME));
    if let Some(secret) = &config.tls_secret {
        new_volumes.push(Volume {
            name: TLS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }

    // Spark gives executor pods an ownerReference to the driver pod whenever there is one
    // (cluster mode, or client mode with spark.kubernetes.driver.pod.name).
    let driver_pod = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Pod" && !o.name.is_empty())
        .map(|o| o.name.as_str());
    let sidecar = sidecar_container(spec, exec, &local_mounts, driver_pod, config);
    let mut volumes_exist = spec.volumes.is_some();
    for volume in &new_volumes {
        ops.push(append(
            &["spec"],
            "volumes",
            volumes_exist,
            to_value(volume),
        ));
        volumes_exist = true;
    }
    ops.push(append(&["spec"], "containers", true, to_value(&sidecar)));

    match spec.termination_grace_period_seconds {
        Some(current) if current >= config.grace_period_seconds => {}
        Some(_) => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(&["spec", "terminationGracePeriodSeconds"]),
            value: Value::from(config.grace_period_seconds),
        })),
        None => ops.push(add(
            &["spec", "terminationGracePeriodSeconds"],
            Value::from(config.grace_period_seconds),
        )),
    }

    annotate(pod, exec, &mut ops);
    Ok(Patch(ops))
}

/// The names and ports the injection adds must be free.
fn check_names_and_ports(spec: &PodSpec, config: &Config) -> Result<(), Unsafe> {
    let all_containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in all_containers.clone() {
        if container.name == config.container_name {
            return Err(Unsafe::NameTaken {
                what: "container",
                name: container.name.clone(),
            });
        }
    }
    let ours = [
        Some(STATE_VOLUME),
        config.tls_secret.as_ref().map(|_| TLS_VOLUME),
    ];
    if let Some(taken) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| ours.contains(&Some(v.name.as_str())))
    {
        return Err(Unsafe::NameTaken {
            what: "volume",
            name: taken.name.clone(),
        });
    }
    for container in all_containers {
        for port in container.ports.iter().flatten() {
            let taken = [config.shuffle_port, config.admin_port]
                .into_iter()
                .find(|p| i64::from(*p) == i64::from(port.container_port));
            if let Some(port) = taken {
                return Err(Unsafe::PortTaken {
                    container: container.name.clone(),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// Spark's executor container: the one named as Spark names it, else the one with
/// `SPARK_EXECUTOR_ID` in its env.
fn executor_container(spec: &PodSpec) -> Option<(usize, &Container)> {
    let by_name = spec
        .containers
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == SPARK_EXECUTOR_CONTAINER);
    by_name.or_else(|| {
        spec.containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.env.iter().flatten().any(|e| e.name == ENV_EXECUTOR_ID))
    })
}

fn sidecar_container(
    spec: &PodSpec,
    exec: &Container,
    local_mounts: &[VolumeMount],
    driver_pod: Option<&str>,
    config: &Config,
) -> Container {
    let mut args = vec![
        "serve".to_owned(),
        format!("--port={}", config.shuffle_port),
        format!("--admin-port={}", config.admin_port),
        format!("--state-dir={STATE_DIR}"),
        format!("--log-level={}", config.log_level),
    ];
    if config.tls_secret.is_some() {
        args.push(format!("--tls-cert-file={TLS_DIR}/tls.crt"));
        args.push(format!("--tls-key-file={TLS_DIR}/tls.key"));
    }
    args.extend(
        local_mounts
            .iter()
            .map(|m| format!("--allowed-root={}", m.mount_path)),
    );

    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_owned(),
            api_version: None,
        }),
        ..EnvVarSource::default()
    };
    let mut env = vec![
        EnvVar {
            name: ENV_APP_ID.to_owned(),
            value_from: Some(field(&format!("metadata.labels['{LABEL_APP_ID}']"))),
            ..EnvVar::default()
        },
        EnvVar {
            name: ENV_POD_NAMESPACE.to_owned(),
            value_from: Some(field("metadata.namespace")),
            ..EnvVar::default()
        },
        EnvVar {
            name: ENV_POD_NAME.to_owned(),
            value_from: Some(field("metadata.name")),
            ..EnvVar::default()
        },
    ];
    // spark.authenticate with Spark's generated per-app secret: the sidecar needs the same one.
    env.extend(
        exec.env
            .iter()
            .flatten()
            .filter(|e| e.name == ENV_AUTH_SECRET)
            .cloned(),
    );
    match driver_pod {
        Some(name) => env.push(EnvVar {
            name: ENV_DRIVER_POD.to_owned(),
            value: Some(name.to_owned()),
            ..EnvVar::default()
        }),
        // No driver pod to watch: the driver's endpoint tells whether the application runs.
        None => env.extend(
            exec.env
                .iter()
                .flatten()
                .filter(|e| e.name == ENV_SPARK_DRIVER_URL)
                .map(|e| EnvVar {
                    name: ENV_DRIVER_URL.to_owned(),
                    ..e.clone()
                }),
        ),
    }

    let mut mounts = local_mounts.to_vec();
    mounts.push(VolumeMount {
        name: STATE_VOLUME.to_owned(),
        mount_path: STATE_DIR.to_owned(),
        ..VolumeMount::default()
    });
    if config.tls_secret.is_some() {
        // Not by subPath: the kubelet then updates the files when the Secret is renewed.
        mounts.push(VolumeMount {
            name: TLS_VOLUME.to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts.extend(
        exec.volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path == SERVICE_ACCOUNT_MOUNT)
            .cloned(),
    );

    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("kshuffle-admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    };

    Container {
        name: config.container_name.clone(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("kshuffle".to_owned()),
                container_port: i32::from(config.shuffle_port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("kshuffle-admin".to_owned()),
                container_port: i32::from(config.admin_port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(config.resources.clone()),
        security_context: Some(security_context(spec, exec, config)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// Non-root, read-only root filesystem, no capabilities; the executor's user and group (the
/// daemon deletes what the executor writes, and Spark makes its dirs group-writable for the
/// shuffle service).
fn security_context(spec: &PodSpec, exec: &Container, config: &Config) -> SecurityContext {
    let exec_ctx = exec.security_context.as_ref();
    let pod_ctx = spec.security_context.as_ref();
    let pick = |from_exec: Option<i64>, from_pod: Option<i64>| match (from_exec, from_pod) {
        (Some(id), _) => Some(id),
        (None, Some(_)) => None, // inherit the pod's
        (None, None) => Some(config.default_run_as),
    };
    SecurityContext {
        run_as_user: pick(
            exec_ctx.and_then(|c| c.run_as_user),
            pod_ctx.and_then(|c| c.run_as_user),
        ),
        run_as_group: pick(
            exec_ctx.and_then(|c| c.run_as_group),
            pod_ctx.and_then(|c| c.run_as_group),
        ),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The injection marker, and the executor as `kubectl`'s default container if none is set.
fn annotate(pod: &Pod, exec: &Container, ops: &mut Vec<PatchOperation>) {
    let marker = Value::from(env!("CARGO_PKG_VERSION"));
    match pod.metadata.annotations.as_ref() {
        None => {
            let mut map = BTreeMap::new();
            map.insert(ANNOTATION_INJECTED.to_owned(), marker);
            map.insert(
                ANNOTATION_DEFAULT_CONTAINER.to_owned(),
                Value::from(exec.name.clone()),
            );
            ops.push(add(
                &["metadata", "annotations"],
                Value::Object(map.into_iter().collect()),
            ));
        }
        Some(existing) => {
            ops.push(add(
                &["metadata", "annotations", ANNOTATION_INJECTED],
                marker,
            ));
            if !existing.contains_key(ANNOTATION_DEFAULT_CONTAINER) {
                ops.push(add(
                    &["metadata", "annotations", ANNOTATION_DEFAULT_CONTAINER],
                    Value::from(exec.name.clone()),
                ));
            }
        }
    }
}

// === patch helpers ===

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// Appends `item` to the list `parent/field`: `.../-` when the list exists, else creates it.
fn append(parent: &[&str], field: &str, exists: bool, item: Value) -> PatchOperation {
    let mut tokens = parent.to_vec();
    tokens.push(field);
    if exists {
        tokens.push("-");
        add(&tokens, item)
    } else {
        add(&tokens, Value::Array(vec![item]))
    }
}

/// k8s-openapi types always serialize (plain structs of strings, numbers and maps).
fn to_value<T: serde::Serialize>(item: &T) -> Value {
    serde_json::to_value(item).unwrap_or(Value::Null)
}

//! Executor pods: built from a pod template the way Spark's executor builder labels and names
//! them, so the daemon's cleanup, users' tooling and Spark's own backend recognise them.
//!
//! From Spark (`deploy/k8s/Constants.scala`, `BasicExecutorFeatureStep`,
//! `KubernetesUtils.addOwnerReference`, `ExecutorPodsAllocator.requestNewExecutors`):
//! - labels `spark-app-selector=<appId>`, `spark-role=executor`, `spark-exec-id=<id>`,
//!   `spark-exec-resourceprofile-id=0`;
//! - name `<prefix>-exec-<id>`;
//! - `restartPolicy: Never`;
//! - an owner reference to the driver pod (`controller: true`), so Kubernetes
//!   garbage-collects executors with their driver;
//! - on the executor container (`BasicExecutorFeatureStep`): env `SPARK_EXECUTOR_ID`,
//!   `SPARK_APPLICATION_ID`, `SPARK_EXECUTOR_CORES`, `SPARK_EXECUTOR_MEMORY`,
//!   `SPARK_EXECUTOR_POD_IP` (from `status.podIP`), `SPARK_DRIVER_URL` when the driver host
//!   is known; requests of `cpu` (the request cores, else `spark.executor.cores`) and
//!   `memory` (executor memory plus overhead, also the memory limit), and a `cpu` limit when
//!   `spark.kubernetes.executor.limit.cores` is set. These override the template, as in Spark.
//!
//! A [`Template::Spark`] is the pod Spark's own executor builder made in the driver (sent by
//! the JVM adapter, `scheduler/jvm`): it already carries everything above that is the same for
//! every executor (resources, driver URL, volumes, `SPARK_JAVA_OPT_*`, the executor conf map),
//! so only each executor's own fields are set: the name, the labels, `SPARK_EXECUTOR_ID`, the
//! owner reference and the hostname (the last 63 characters of the pod name, as
//! `BasicExecutorFeatureStep` makes it).
//!
//! Invariant: a template is checked when loaded; a template that is not a valid Pod is
//! refused then, not at the first pod creation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::config::Executor;

use crate::ids::ExecutorId;

/// `SPARK_APP_ID_LABEL`.
pub const APP_LABEL: &str = "spark-app-selector";
/// `SPARK_ROLE_LABEL`.
pub const ROLE_LABEL: &str = "spark-role";
/// `SPARK_POD_EXECUTOR_ROLE`.
pub const EXECUTOR_ROLE: &str = "executor";
/// `SPARK_EXECUTOR_ID_LABEL`.
pub const EXEC_ID_LABEL: &str = "spark-exec-id";
/// `SPARK_RESOURCE_PROFILE_ID_LABEL`.
pub const PROFILE_LABEL: &str = "spark-exec-resourceprofile-id";
/// The executor container's name when the template names none
/// (`DEFAULT_EXECUTOR_CONTAINER_NAME`).
pub const DEFAULT_CONTAINER: &str = "spark-kubernetes-executor";

/// A pod template that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a Pod in YAML or JSON.
    #[error("the pod template is not a valid Pod: {0}")]
    NotAPod(String),
    /// It parses but cannot make executor pods.
    #[error("the pod template cannot be used for executors: {0}")]
    Unusable(String),
}

impl Error {
    /// A label for metrics and logs. Caused by the user's template.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotAPod(_) => "template_not_a_pod",
            Self::Unusable(_) => "template_unusable",
        }
    }
}

/// Parses and checks a pod template (YAML or JSON).
///
/// # Errors
/// [`Error::NotAPod`] when it does not parse as a Pod or names another kind;
/// [`Error::Unusable`] when the executor container has no image and none is configured.
pub fn parse_template(
    text: &str,
    image: Option<&str>,
    container: Option<&str>,
) -> Result<Pod, Error> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| Error::NotAPod(e.to_string()))?;
    if !value.is_object() {
        return Err(Error::NotAPod("expected a mapping at the top level".into()));
    }
    if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
        && kind != "Pod"
    {
        return Err(Error::NotAPod(format!("kind is {kind:?}, not \"Pod\"")));
    }
    if let Some(v) = value.get("apiVersion").and_then(|k| k.as_str())
        && v != "v1"
    {
        return Err(Error::NotAPod(format!("apiVersion is {v:?}, not \"v1\"")));
    }
    let pod: Pod = serde_json::from_value(value).map_err(|e| Error::NotAPod(e.to_string()))?;
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[]);
    let exec = match container {
        Some(name) => containers.iter().find(|c| c.name == name),
        None => containers.first(),
    };
    let has_image = exec
        .and_then(|c| c.image.as_deref())
        .is_some_and(|i| !i.is_empty());
    if !has_image && image.is_none() {
        return Err(Error::Unusable(
            "the executor container has no image and spark.kubernetes.container.image is not set"
                .into(),
        ));
    }
    Ok(pod)
}

/// Where the pod of each executor starts from.
#[derive(Debug, Clone)]
pub enum Template {
    /// A user's pod template (`spark.kubernetes.executor.podTemplateFile`): Spark's settings
    /// (image, resources, driver URL) are applied over it.
    User(Pod),
    /// The executor pod Spark's builder made: used as it is but for each executor's own
    /// fields (see the module docs).
    Spark(Pod),
}

impl From<Pod> for Template {
    fn from(pod: Pod) -> Self {
        Self::User(pod)
    }
}

/// Spark's executor hostname for a pod name (`BasicExecutorFeatureStep`): its last 63
/// characters, without leading non-word characters, other characters than word characters
/// and `-` replaced by `_`.
pub fn spark_hostname(pod_name: &str) -> String {
    let chars: Vec<char> = pod_name.chars().collect();
    let tail = &chars[chars.len().saturating_sub(63)..];
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(tail.len());
    let mut replaced = false;
    for &c in tail.iter().skip_while(|c| !word(**c)) {
        if word(c) || c == '-' {
            out.push(c);
            replaced = false;
        } else if !replaced {
            // A run of such characters becomes one `_`, as Spark's `[^\w-]+` does.
            out.push('_');
            replaced = true;
        }
    }
    out
}

/// Builds executor pods for one application.
#[derive(Debug, Clone)]
pub struct Factory {
    template: Pod,
    /// The template is Spark's own executor pod ([`Template::Spark`]).
    from_spark: bool,
    app_id: String,
    prefix: String,
    image: Option<String>,
    container: Option<String>,
    owner: Option<OwnerReference>,
    executor: Option<Executor>,
}

/// An owner reference to the driver pod, as `KubernetesUtils.addOwnerReference` makes it.
pub fn owner_reference(driver: &Pod) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: driver.metadata.name.clone()?,
        uid: driver.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

impl Factory {
    /// A factory over a checked template (or an empty pod when `None`).
    pub fn new(
        template: Option<Template>,
        app_id: &str,
        prefix: Option<&str>,
        image: Option<&str>,
        container: Option<&str>,
        owner: Option<OwnerReference>,
    ) -> Self {
        let (template, from_spark) = match template {
            None => (Pod::default(), false),
            Some(Template::User(pod)) => (pod, false),
            Some(Template::Spark(pod)) => (pod, true),
        };
        Self {
            template,
            from_spark,
            app_id: app_id.to_owned(),
            prefix: prefix.unwrap_or(app_id).to_owned(),
            // Spark's pod has Spark's image already.
            image: image.filter(|_| !from_spark).map(str::to_owned),
            container: container.map(str::to_owned),
            owner,
            executor: None,
        }
    }

    /// Sets the executor resources and driver address put on each pod (not on a
    /// [`Template::Spark`], which has Spark's own).
    pub fn with_executor(mut self, executor: Executor) -> Self {
        if !self.from_spark {
            self.executor = Some(executor);
        }
        self
    }

    /// The label selector of this application's executor pods.
    pub fn selector(&self) -> String {
        format!("{APP_LABEL}={},{ROLE_LABEL}={EXECUTOR_ROLE}", self.app_id)
    }

    /// The pod name of an executor.
    pub fn pod_name(&self, id: ExecutorId) -> String {
        format!("{}-exec-{id}", self.prefix)
    }

    /// The pod for executor `id`.
    pub fn build(&self, id: ExecutorId) -> Pod {
        let mut pod = self.template.clone();
        let meta = &mut pod.metadata;
        meta.name = Some(self.pod_name(id));
        meta.generate_name = None;
        meta.namespace = None;
        meta.resource_version = None;
        meta.uid = None;
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(APP_LABEL.into(), self.app_id.clone());
        labels.insert(ROLE_LABEL.into(), EXECUTOR_ROLE.into());
        labels.insert(EXEC_ID_LABEL.into(), id.to_string());
        labels.insert(PROFILE_LABEL.into(), "0".into());
        if let Some(owner) = &self.owner {
            meta.owner_references = Some(vec![owner.clone()]);
        }
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        spec.restart_policy = Some("Never".into());
        if self.from_spark && spec.hostname.is_some() {
            spec.hostname = Some(spark_hostname(&self.pod_name(id)));
        }
        let idx = match &self.container {
            Some(name) => spec.containers.iter().position(|c| &c.name == name),
            None => (!spec.containers.is_empty()).then_some(0),
        };
        let idx = idx.unwrap_or_else(|| {
            spec.containers.push(Container {
                name: self
                    .container
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTAINER.into()),
                ..Container::default()
            });
            spec.containers.len() - 1
        });
        if let Some(c) = spec.containers.get_mut(idx) {
            if let Some(image) = &self.image {
                c.image = Some(image.clone());
            }
            let mut vars = vec![
                ("SPARK_EXECUTOR_ID", id.to_string()),
                ("SPARK_APPLICATION_ID", self.app_id.clone()),
            ];
            if let Some(e) = &self.executor {
                vars.push(("SPARK_EXECUTOR_CORES", e.cores.to_string()));
                vars.push(("SPARK_EXECUTOR_MEMORY", format!("{}m", e.memory_mib)));
                if let Some(url) = &e.driver_url {
                    vars.push(("SPARK_DRIVER_URL", url.clone()));
                }
            }
            let env = c.env.get_or_insert_with(Vec::new);
            for (name, value) in vars {
                env.retain(|e| e.name != name);
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value),
                    value_from: None,
                });
            }
            if let Some(e) = &self.executor {
                env.retain(|v| v.name != "SPARK_EXECUTOR_POD_IP");
                env.push(EnvVar {
                    name: "SPARK_EXECUTOR_POD_IP".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: "status.podIP".into(),
                        }),
                        ..EnvVarSource::default()
                    }),
                });
                let res = c
                    .resources
                    .get_or_insert_with(ResourceRequirements::default);
                let memory = Quantity(format!("{}Mi", e.memory_mib.saturating_add(e.overhead_mib)));
                let cpu = Quantity(
                    e.request_cores
                        .clone()
                        .unwrap_or_else(|| e.cores.to_string()),
                );
                let requests = res.requests.get_or_insert_with(BTreeMap::new);
                requests.insert("cpu".into(), cpu);
                requests.insert("memory".into(), memory.clone());
                let limits = res.limits.get_or_insert_with(BTreeMap::new);
                limits.insert("memory".into(), memory);
                if let Some(l) = &e.limit_cores {
                    limits.insert("cpu".into(), Quantity(l.clone()));
                }
            }
        }
        pod.status = None;
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "
apiVersion: v1
kind: Pod
metadata:
  labels:
    team: data
spec:
  containers:
    - name: spark-kubernetes-executor
      image: spark:4.0.0
      resources:
        requests: {cpu: '1', memory: 2Gi}
";

    #[test]
    fn builds_pods_spark_recognises() {
        let template = parse_template(TEMPLATE, None, None).unwrap();
        let mut driver = Pod::default();
        driver.metadata.name = Some("driver".into());
        driver.metadata.uid = Some("u-1".into());
        let conf = crate::config::Config::from_args([
            "spark.executor.memory=2g",
            "spark.executor.cores=2",
            "spark.driver.host=drv",
        ])
        .unwrap();
        let f = Factory::new(
            Some(template.into()),
            "spark-123",
            None,
            None,
            None,
            owner_reference(&driver),
        )
        .with_executor(conf.executor);
        let pod = f.build(ExecutorId(7));
        assert_eq!(pod.metadata.name.as_deref(), Some("spark-123-exec-7"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["spark-app-selector"], "spark-123");
        assert_eq!(labels["spark-role"], "executor");
        assert_eq!(labels["spark-exec-id"], "7");
        assert_eq!(labels["team"], "data");
        let owner = &pod.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Pod", "driver", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let env = spec.containers[0].env.clone().unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(get("SPARK_EXECUTOR_ID").as_deref(), Some("7"));
        assert_eq!(get("SPARK_EXECUTOR_CORES").as_deref(), Some("2"));
        assert_eq!(get("SPARK_EXECUTOR_MEMORY").as_deref(), Some("2048m"));
        assert_eq!(
            get("SPARK_DRIVER_URL").as_deref(),
            Some("spark://CoarseGrainedScheduler@drv:7078")
        );
        assert!(
            env.iter()
                .any(|e| e.name == "SPARK_EXECUTOR_POD_IP" && e.value_from.is_some())
        );
        // Spark's values override the template's requests: 2 cores, 2048 + 384 MiB.
        let res = spec.containers[0].resources.clone().unwrap();
        let requests = res.requests.unwrap();
        assert_eq!(requests["cpu"].0, "2");
        assert_eq!(requests["memory"].0, "2432Mi");
        assert_eq!(res.limits.unwrap()["memory"].0, "2432Mi");
        assert_eq!(
            f.selector(),
            "spark-app-selector=spark-123,spark-role=executor"
        );
    }

    #[test]
    fn spark_built_pods_keep_their_fields_but_each_executors_own() {
        // What the JVM adapter sends: the pod of Spark's builder, without the fields that are
        // each executor's own; a sidecar before the executor container.
        let spark: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"spark-app-selector": "spark-9", "spark-role": "executor"}},
            "spec": {
                "hostname": "x",
                "containers": [
                    {"name": "side", "image": "busybox"},
                    {"name": "spark-kubernetes-executor", "image": "spark:3.5",
                     "env": [{"name": "SPARK_DRIVER_URL", "value": "spark://d:1"},
                             {"name": "SPARK_EXECUTOR_MEMORY", "value": "512m"}],
                     "resources": {"requests": {"cpu": "1", "memory": "896Mi"}}}
                ]
            }
        }))
        .unwrap();
        let conf = crate::config::Config::from_args(["spark.executor.memory=2g"]).unwrap();
        let f = Factory::new(
            Some(Template::Spark(spark)),
            "spark-9",
            Some("job-5f2a"),
            Some("other:1"),
            Some("spark-kubernetes-executor"),
            None,
        )
        .with_executor(conf.executor);
        let pod = f.build(ExecutorId(12));
        assert_eq!(pod.metadata.name.as_deref(), Some("job-5f2a-exec-12"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["spark-exec-id"], "12");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("job-5f2a-exec-12"));
        assert_eq!(spec.containers[0].name, "side");
        assert_eq!(spec.containers[0].env, None);
        let c = &spec.containers[1];
        // Spark's image and resources stay; only the executor id is added.
        assert_eq!(c.image.as_deref(), Some("spark:3.5"));
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["memory"].0, "896Mi");
        let env: Vec<(&str, Option<&str>)> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env,
            [
                ("SPARK_DRIVER_URL", Some("spark://d:1")),
                ("SPARK_EXECUTOR_MEMORY", Some("512m")),
                ("SPARK_EXECUTOR_ID", Some("12")),
                ("SPARK_APPLICATION_ID", Some("spark-9")),
            ]
        );
    }

    #[test]
    fn hostnames_are_sparks() {
        assert_eq!(spark_hostname("app-exec-1"), "app-exec-1");
        let long = format!("{}-exec-7", "a".repeat(70));
        let h = spark_hostname(&long);
        assert_eq!(h.len(), 63);
        assert!(h.ends_with("a-exec-7"));
        // Leading non-word characters go; other runs become one `_`.
        assert_eq!(spark_hostname("--a.b..c-exec-2"), "a_b_c-exec-2");
    }

    #[test]
    fn bad_templates_are_refused() {
        for (text, why) in [
            ("- a\n- b\n", "not a mapping"),
            ("kind: Deployment\napiVersion: apps/v1\n", "Deployment"),
            ("spec: {containers: 3}\n", "containers is not a list"),
            ("{{{", "not YAML"),
        ] {
            assert!(
                matches!(
                    parse_template(text, Some("img"), None),
                    Err(Error::NotAPod(_))
                ),
                "{why}"
            );
        }
        let no_image = "spec: {containers: [{name: c}]}\n";
        assert!(matches!(
            parse_template(no_image, None, None),
            Err(Error::Unusable(_))
        ));
        assert!(parse_template(no_image, Some("spark:4"), None).is_ok());
        // An empty template with an image from the conf is fine: one container is added.
        let f = Factory::new(None, "app", Some("p"), Some("spark:4"), None, None);
        let pod = f.build(ExecutorId(1));
        assert_eq!(
            pod.spec.unwrap().containers[0].image.as_deref(),
            Some("spark:4")
        );
    }
}

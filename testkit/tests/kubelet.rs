//! The process kubelet, with a shell script standing in for `java`: it records the
//! arguments, env and working directory it was started with and then exits, sleeps, or
//! ignores SIGTERM, as the pod's `MODE` env says. Quick (no JVM); the real-JVM run is
//! `spark_k8s_kubelet_*` in `spark_k8s_client.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret, Service};
use kshuffle_testkit::apiserver::{FakeApiServer, Node, ProcessKubelet};
use kshuffle_testkit::kube_client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const NS: &str = "spark";
/// The kubelet's JVM options in [`setup`].
const JVM_OPTIONS: &str = "-XX:+UseSerialGC";

const FAKE_JAVA: &str = r#"#!/bin/sh
p=${NAME:+$NAME.}
if [ "$1" = probe ]; then
  echo x >> "${p}probes"
  test -e "${p}healthy"
  exit $?
fi
if [ "$1" = prestop ]; then
  sleep 0.3
  echo done > "${p}prestop"
  exit 0
fi
printf '%s\n' "$@" > "${p}args"
env > "${p}env"
echo $$ > "${p}pid"
case "$MODE" in
  exit*) exit "${MODE#exit}" ;;
  stubborn) trap '' TERM ;;
  *) trap 'echo term >> "${p}signals"; exit 143' TERM ;;
esac
sleep 600 &
wait
wait
"#;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fields drop in order: the server first (its kubelet kills every container), then the
/// directory, which no container writes to any more.
struct Setup {
    server: FakeApiServer,
    kubelet: ProcessKubelet,
    dir: RemovedOnDrop,
}

struct RemovedOnDrop(PathBuf);

impl std::ops::Deref for RemovedOnDrop {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("kshuffle-kubelet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("spark/jars")).unwrap();
    let java = dir.join("java");
    write_exe(&java, FAKE_JAVA);
    let node_bin = dir.join("kshuffle-node");
    write_exe(&node_bin, FAKE_JAVA);
    let kubelet = ProcessKubelet::new(dir.join("spark"), dir.join("work"))
        .java(&java)
        .image("kshuffle-node", &node_bin)
        .address_env("kshuffle-node", &["KSHUFFLE_BIND"])
        .noop_image("busybox")
        .max_probe_period(Duration::from_millis(100))
        .mount_wait(Duration::from_secs(1))
        .java_options(JVM_OPTIONS);
    let server = FakeApiServer::builder()
        .nodes(vec![Node::new("node-1", 4, 8), Node::new("node-2", 4, 8)])
        .process_kubelet(kubelet.clone())
        .start()
        .await
        .unwrap();
    Setup {
        server,
        kubelet,
        dir: RemovedOnDrop(dir),
    }
}

/// An executor pod as Spark 4.3 creates it (trimmed), with `MODE` for the fake java.
fn executor_pod(name: &str, mode: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "spark-role": "executor" } },
        "spec": {
            "terminationGracePeriodSeconds": 30,
            // As Spark sets it.
            "restartPolicy": "Never",
            "containers": [{
                "name": "spark-kubernetes-executor",
                "image": "kshuffle/spark-test",
                "args": ["executor"],
                "env": [
                    { "name": "MODE", "value": mode },
                    { "name": "SPARK_DRIVER_URL", "value": "spark://CoarseGrainedScheduler@127.0.0.1:7078" },
                    { "name": "SPARK_EXECUTOR_CORES", "value": "1" },
                    { "name": "SPARK_EXECUTOR_MEMORY", "value": "512m" },
                    { "name": "SPARK_APPLICATION_ID", "value": "spark-app-1" },
                    { "name": "SPARK_CONF_DIR", "value": "/opt/spark/conf" },
                    { "name": "SPARK_EXECUTOR_ID", "value": "7" },
                    { "name": "SPARK_RESOURCE_PROFILE_ID", "value": "0" },
                    { "name": "SPARK_JAVA_OPT_10", "value": "-Dten" },
                    { "name": "SPARK_JAVA_OPT_2", "value": "-Dtwo" },
                    { "name": "SPARK_JAVA_OPT_0", "value": "-Dzero" },
                    { "name": "SPARK_LOCAL_DIRS", "value": "/var/data/spark-abc" },
                    { "name": "SPARK_EXECUTOR_POD_IP",
                      "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
                    { "name": "SPARK_EXECUTOR_POD_NAME",
                      "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } } },
                    { "name": "NODE",
                      "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                ],
                "volumeMounts": [
                    { "name": "spark-local-dir-1", "mountPath": "/var/data/spark-abc" },
                    { "name": "spark-conf-volume-exec", "mountPath": "/opt/spark/conf" },
                ],
            }],
            "volumes": [
                { "name": "spark-local-dir-1", "emptyDir": {} },
                { "name": "spark-conf-volume-exec",
                  "configMap": { "name": "spark-exec-conf-map", "defaultMode": 420 } },
            ],
        },
    }))
    .unwrap()
}

async fn create_conf_map(server: &FakeApiServer) {
    create_json::<ConfigMap>(
        server,
        json!({
            "metadata": { "name": "spark-exec-conf-map" },
            "data": { "spark.properties": "spark.kubernetes.namespace=spark\n" },
        }),
    )
    .await;
}

/// The pods of NS, through a real client.
fn pods_api(server: &FakeApiServer) -> Api<Pod> {
    Api::namespaced(kube_client(server, NS).unwrap(), NS)
}

/// Creates `pod` through `pods`.
async fn create(pods: &Api<Pod>, pod: &Pod) {
    pods.create(&PostParams::default(), pod).await.unwrap();
}

/// Creates the object of kind `K` that `value` describes in NS.
async fn create_json<K>(server: &FakeApiServer, value: serde_json::Value)
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(value).unwrap();
    Api::<K>::namespaced(kube_client(server, NS).unwrap(), NS)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// Writes an executable script at `path`.
fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A port of node-1 (127.0.1.1) that nobody listens on.
fn closed_port() -> u16 {
    let closed = std::net::TcpListener::bind("127.0.1.1:0").unwrap();
    closed.local_addr().unwrap().port()
}

/// When `path` was last written.
fn modified(path: impl AsRef<Path>) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn phase(server: &FakeApiServer, name: &str) -> Option<String> {
    server
        .pod(NS, name)
        .and_then(|p| p.status.and_then(|s| s.phase))
}

async fn wait_phase(server: &FakeApiServer, name: &str, want: &str) -> Pod {
    within(
        &format!("{name} to be {want}"),
        until(|| {
            (phase(server, name).as_deref() == Some(want)).then(|| server.pod(NS, name).unwrap())
        }),
    )
    .await
}

/// The status of pod `name` once it has failed.
async fn failed(server: &FakeApiServer, name: &str) -> PodStatus {
    wait_phase(server, name, "Failed").await.status.unwrap()
}

/// Waits for pod `name` to fail with `reason` and a message that contains `message`.
async fn fails_with(server: &FakeApiServer, name: &str, reason: &str, message: &str) {
    let st = failed(server, name).await;
    assert_eq!(st.reason.as_deref(), Some(reason), "{name}");
    let got = st.message.unwrap();
    assert!(got.contains(message), "{name}: {message:?} not in {got:?}");
}

/// Waits for pod `name` to be gone from the server.
async fn wait_gone(server: &FakeApiServer, name: &str) {
    within(
        "the pod to go",
        until(|| server.pod(NS, name).is_none().then_some(())),
    )
    .await;
}

/// Waits for pod `name`'s (pod Ready, first container ready) to be `want`.
async fn wait_ready(server: &FakeApiServer, name: &str, want: (bool, bool), what: &str) {
    within(
        what,
        until(|| (ready_of(server, name)? == want).then_some(())),
    )
    .await;
}

/// Waits for a file the fake java writes (it is written right after start).
async fn read_when_there(path: &Path) -> String {
    within(
        &format!("{}", path.display()),
        until(|| {
            std::fs::read_to_string(path)
                .ok()
                .filter(|s| s.ends_with('\n'))
        }),
    )
    .await
}

#[tokio::test]
async fn an_executor_pod_runs_the_command_of_sparks_image() {
    let s = setup("command").await;
    create_conf_map(&s.server).await;
    let pods = pods_api(&s.server);
    create(&pods, &executor_pod("exec-7", "sleep")).await;
    let pod = wait_phase(&s.server, "exec-7", "Running").await;
    let status = pod.status.unwrap();
    let pod_ip = status.pod_ip.unwrap();
    assert!(pod_ip.starts_with("127.1."), "{pod_ip}");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.1.1"), "node-1");

    let dir = s.kubelet.pod_dir(NS, "exec-7");
    let conf = dir.join("volumes/spark-conf-volume-exec");
    let local = dir.join("volumes/spark-local-dir-1");
    let args = read_when_there(&dir.join("args")).await;
    let want = [
        "-Dzero",
        "-Dtwo",
        "-Dten",
        "-Xms512m",
        "-Xmx512m",
        "-cp",
        &format!(
            "{}:{}/jars/*",
            conf.display(),
            s.dir.join("spark").display()
        ),
        "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
        "--driver-url",
        "spark://CoarseGrainedScheduler@127.0.0.1:7078",
        "--executor-id",
        "7",
        "--cores",
        "1",
        "--app-id",
        "spark-app-1",
        "--hostname",
        &pod_ip,
        "--resourceProfileId",
        "0",
        "--podName",
        "exec-7",
    ];
    assert_eq!(args.lines().collect::<Vec<_>>(), want);

    let env = read_when_there(&dir.join("env")).await;
    let has = |line: String| assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    has(format!("SPARK_EXECUTOR_POD_IP={pod_ip}"));
    has("NODE=node-1".into());
    has(format!("SPARK_LOCAL_DIRS={}", local.display()));
    has(format!("SPARK_CONF_DIR={}", conf.display()));
    has(format!("SPARK_HOME={}", s.dir.join("spark").display()));
    assert!(local.is_dir());
    assert_eq!(
        std::fs::read_to_string(conf.join("spark.properties")).unwrap(),
        "spark.kubernetes.namespace=spark\n"
    );
}

/// A driver pod as Spark 4.3 creates it in cluster mode for a Python application (trimmed),
/// with `MODE` for the fake spark-submit.
fn driver_pod(name: &str, app: &str, mode: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "spark-app-selector": app, "spark-role": "driver" } },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "spark-kubernetes-driver",
                "image": "kshuffle/spark-test",
                "args": ["driver", "--properties-file", "/opt/spark/conf/spark.properties",
                         "--class", "org.apache.spark.deploy.PythonRunner",
                         "local:///jobs/job.py", "--flag", "/opt/spark/conf/not-mapped-as-app-arg"],
                "env": [
                    { "name": "MODE", "value": mode },
                    { "name": "SPARK_USER", "value": "test" },
                    { "name": "SPARK_APPLICATION_ID", "value": app },
                    { "name": "SPARK_DRIVER_BIND_ADDRESS",
                      "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
                    { "name": "SPARK_LOCAL_DIRS", "value": "/var/data/spark-d1" },
                    { "name": "SPARK_CONF_DIR", "value": "/opt/spark/conf" },
                ],
                "ports": [
                    { "name": "driver-rpc-port", "containerPort": 7078 },
                    { "name": "blockmanager", "containerPort": 7079 },
                ],
                "volumeMounts": [
                    { "name": "spark-local-dir-1", "mountPath": "/var/data/spark-d1" },
                    { "name": "spark-conf-volume-driver", "mountPath": "/opt/spark/conf" },
                    { "name": "pod-template-volume", "mountPath": "/opt/spark/pod-template" },
                ],
            }],
            "volumes": [
                { "name": "spark-local-dir-1", "emptyDir": {} },
                { "name": "spark-conf-volume-driver",
                  "configMap": { "name": "spark-drv-conf-map", "defaultMode": 420,
                                 "items": [{ "key": "spark.properties", "path": "spark.properties" }] } },
                { "name": "pod-template-volume",
                  "configMap": { "name": "podspec-configmap",
                                 "items": [{ "key": "podspec-configmap-key", "path": "pod-spec-template.yml" }] } },
            ],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_driver_pod_runs_spark_submit_in_client_mode_and_its_service_name_resolves_for_jvms() {
    let s = setup("driver").await;
    let submit = s.dir.join("spark/bin/spark-submit");
    std::fs::create_dir_all(submit.parent().unwrap()).unwrap();
    write_exe(&submit, FAKE_JAVA);
    create_json::<ConfigMap>(&s.server, json!({
        "metadata": { "name": "spark-drv-conf-map" },
        "data": {
            "spark.properties": "spark.driver.host=app-1-driver-svc.spark.svc\n\
                spark.kubernetes.executor.podTemplateFile=/opt/spark/pod-template/pod-spec-template.yml\n",
            // Not an item of the volume: not written.
            "log4j2.properties": "rootLogger.level=info\n",
        },
    })).await;
    create_json::<ConfigMap>(
        &s.server,
        json!({
            "metadata": { "name": "podspec-configmap" },
            "data": { "podspec-configmap-key": "kind: Pod\n" },
        }),
    )
    .await;
    create_conf_map(&s.server).await;
    // Spark's headless driver Service, created before the driver pod.
    create_json::<Service>(
        &s.server,
        json!({
            "metadata": { "name": "app-1-driver-svc" },
            "spec": {
                "clusterIP": "None",
                "selector": { "spark-app-selector": "app-1", "spark-role": "driver" },
                "ports": [{ "name": "driver-rpc-port", "port": 7078, "targetPort": 7078 }],
            },
        }),
    )
    .await;
    let pods = pods_api(&s.server);
    create(&pods, &driver_pod("drv", "app-1", "sleep")).await;
    let pod = wait_phase(&s.server, "drv", "Running").await;
    let ip = pod.status.unwrap().pod_ip.unwrap();

    // Spark's entrypoint for `driver`: spark-submit of SPARK_HOME in client mode, bound to
    // the pod IP, then the container's args with the mounted properties file's path mapped.
    let dir = s.kubelet.pod_dir(NS, "drv");
    let conf = dir.join("volumes/spark-conf-volume-driver");
    let args = read_when_there(&dir.join("args")).await;
    let props = format!("{}/spark.properties", conf.display());
    let unmapped = format!("{}/not-mapped-as-app-arg", conf.display());
    let want = [
        "--conf",
        &format!("spark.driver.bindAddress={ip}"),
        "--conf",
        &format!("spark.executorEnv.SPARK_DRIVER_POD_IP={ip}"),
        "--deploy-mode",
        "client",
        "--properties-file",
        &props,
        "--class",
        "org.apache.spark.deploy.PythonRunner",
        "local:///jobs/job.py",
        "--flag",
        &unmapped,
    ];
    assert_eq!(args.lines().collect::<Vec<_>>(), want);
    // The volumes' items are projected at their paths, and the properties file's value
    // naming the pod template's mount path is mapped like env values are.
    let template = dir.join("volumes/pod-template-volume/pod-spec-template.yml");
    assert_eq!(std::fs::read_to_string(&template).unwrap(), "kind: Pod\n");
    assert_eq!(
        std::fs::read_to_string(conf.join("spark.properties")).unwrap(),
        format!(
            "spark.driver.host=app-1-driver-svc.spark.svc\n\
             spark.kubernetes.executor.podTemplateFile={}\n",
            template.display()
        )
    );
    assert!(!conf.join("log4j2.properties").exists());
    let env = read_when_there(&dir.join("env")).await;
    let hosts = dir.join("hosts");
    let has = |line: String| assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    has(format!("SPARK_DRIVER_BIND_ADDRESS={ip}"));
    has(format!("SPARK_CONF_DIR={}", conf.display()));
    has(format!("SPARK_HOME={}", s.dir.join("spark").display()));
    // The kubelet's JVM options, the pod's own temp dir (which exists), its hosts file.
    has(format!(
        "JAVA_TOOL_OPTIONS={JVM_OPTIONS} -Djava.io.tmpdir={} -Djdk.net.hosts.file={}",
        dir.join("tmp").display(),
        hosts.display()
    ));
    assert!(dir.join("tmp").is_dir());

    // An executor of the app resolves the driver's Service name to the driver pod's IP
    // from its own hosts file (JAVA_TOOL_OPTIONS names it).
    create(&pods, &executor_pod("exec-1", "sleep")).await;
    let exec = wait_phase(&s.server, "exec-1", "Running").await;
    let exec_ip = exec.status.unwrap().pod_ip.unwrap();
    let exec_dir = s.kubelet.pod_dir(NS, "exec-1");
    let exec_env = read_when_there(&exec_dir.join("env")).await;
    assert!(
        exec_env.lines().any(|l| l
            == format!(
                "JAVA_TOOL_OPTIONS={JVM_OPTIONS} -Djava.io.tmpdir={} -Djdk.net.hosts.file={}",
                exec_dir.join("tmp").display(),
                exec_dir.join("hosts").display()
            )),
        "{exec_env}"
    );
    let resolves = |file: &Path, name: &str| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().skip(1).any(|n| n == name))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let exec_hosts = exec_dir.join("hosts");
    for name in [
        "app-1-driver-svc.spark.svc",
        "app-1-driver-svc.spark.svc.cluster.local",
        "app-1-driver-svc.spark",
    ] {
        assert_eq!(resolves(&exec_hosts, name), [ip.as_str()], "{name}");
    }
    assert_eq!(resolves(&exec_hosts, "localhost"), ["127.0.0.1"]);
    assert_eq!(resolves(&exec_hosts, "exec-1"), [exec_ip.as_str()]);
    assert_eq!(
        resolves(&hosts, "app-1-driver-svc.spark.svc"),
        [ip.as_str()]
    );

    // The driver ends: its Service has no endpoint left, and the name goes from the files.
    signal_pid(&read_when_there(&dir.join("pid")).await, "TERM");
    wait_phase(&s.server, "drv", "Failed").await;
    within(
        "the driver's name to leave the executor's hosts file",
        until(|| {
            resolves(&exec_hosts, "app-1-driver-svc.spark.svc")
                .is_empty()
                .then_some(())
        }),
    )
    .await;
}

fn signal_pid(pid: &str, sig: &str) {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), pid.trim()])
        .status()
        .unwrap();
}

#[tokio::test]
async fn a_pod_waits_pending_for_a_config_map_created_after_it() {
    let s = setup("mount-wait").await;
    let pods = pods_api(&s.server);
    // As Spark's cluster mode: the pod first, its ConfigMap right after.
    create(&pods, &executor_pod("late-conf", "sleep")).await;
    within(
        "the pod to be bound",
        until(|| {
            s.server
                .pod(NS, "late-conf")
                .and_then(|p| p.spec?.node_name)
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(phase(&s.server, "late-conf").as_deref(), Some("Pending"));
    create_conf_map(&s.server).await;
    wait_phase(&s.server, "late-conf", "Running").await;
    let conf = s
        .kubelet
        .pod_dir(NS, "late-conf")
        .join("volumes/spark-conf-volume-exec/spark.properties");
    assert!(conf.is_file());
}

#[tokio::test]
async fn the_exit_code_sets_the_phase() {
    let s = setup("exit").await;
    create_conf_map(&s.server).await;
    let pods = pods_api(&s.server);
    create(&pods, &executor_pod("ok", "exit0")).await;
    create(&pods, &executor_pod("bad", "exit3")).await;
    wait_phase(&s.server, "ok", "Succeeded").await;
    let bad = wait_phase(&s.server, "bad", "Failed").await;
    let cs = &bad.status.unwrap().container_statuses.unwrap()[0];
    let term = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(term.exit_code, 3);
    assert_eq!(term.reason.as_deref(), Some("Error"));
    assert!(!cs.ready);
}

#[tokio::test]
async fn delete_sends_sigterm_then_removes_the_pod() {
    let s = setup("term").await;
    create_conf_map(&s.server).await;
    let pods = pods_api(&s.server);
    create(&pods, &executor_pod("exec-1", "sleep")).await;
    wait_phase(&s.server, "exec-1", "Running").await;
    let dir = s.kubelet.pod_dir(NS, "exec-1");
    let pid = read_when_there(&dir.join("pid")).await;
    let deleted = pods
        .delete("exec-1", &DeleteParams::default())
        .await
        .unwrap();
    let pod = deleted.left().expect("a graceful delete returns the pod");
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(30));
    wait_gone(&s.server, "exec-1").await;
    assert_eq!(
        std::fs::read_to_string(dir.join("signals")).unwrap(),
        "term\n"
    );
    assert!(!alive(pid.trim()), "the process is gone");
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let s = setup("stubborn").await;
    create_conf_map(&s.server).await;
    let pods = pods_api(&s.server);
    create(&pods, &executor_pod("exec-1", "stubborn")).await;
    wait_phase(&s.server, "exec-1", "Running").await;
    let pid = read_when_there(&s.kubelet.pod_dir(NS, "exec-1").join("pid")).await;
    pods.delete("exec-1", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    wait_gone(&s.server, "exec-1").await;
    assert!(!alive(pid.trim()));
}

fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn every_process_is_killed_when_the_server_is_dropped() {
    let s = setup("drop").await;
    create_conf_map(&s.server).await;
    let pods = pods_api(&s.server);
    let mut pids = Vec::new();
    for name in ["a", "b"] {
        create(&pods, &executor_pod(name, "stubborn")).await;
        wait_phase(&s.server, name, "Running").await;
        let pid = read_when_there(&s.kubelet.pod_dir(NS, name).join("pid")).await;
        pids.push(pid.trim().to_owned());
    }
    assert!(pids.iter().all(|p| alive(p)));
    drop(pods);
    // Dropping the server kills synchronously: no wait needed.
    drop(s);
    for p in &pids {
        assert!(!alive(p), "process {p} survived the drop");
    }
}

#[tokio::test]
async fn pods_the_kubelet_cannot_run_fail_with_a_reason() {
    let s = setup("bad").await;
    let pods = pods_api(&s.server);

    // Spark's image in pass-through mode (args other than driver/executor) is not run.
    let mut driver = executor_pod("driver", "sleep");
    driver.spec.as_mut().unwrap().containers[0].args = Some(vec!["/bin/sh".into()]);
    create(&pods, &driver).await;
    // A driver without its bind address cannot start.
    let mut no_bind = driver_pod("no-bind", "app-2", "sleep");
    no_bind.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap()
        .retain(|e| e.name != "SPARK_DRIVER_BIND_ADDRESS");
    let spec = no_bind.spec.as_mut().unwrap();
    spec.volumes.as_mut().unwrap().truncate(1);
    spec.containers[0]
        .volume_mounts
        .as_mut()
        .unwrap()
        .truncate(1);
    create(&pods, &no_bind).await;
    // An item naming a key its ConfigMap does not have.
    create_json::<ConfigMap>(
        &s.server,
        json!({
            "metadata": { "name": "spark-drv-conf-map" },
            "data": { "other.properties": "a=b\n" },
        }),
    )
    .await;
    create(&pods, &driver_pod("bad-item", "app-3", "sleep")).await;
    // No ConfigMap for the conf volume.
    create(&pods, &executor_pod("no-conf", "sleep")).await;

    fails_with(
        &s.server,
        "driver",
        "UnsupportedContainer",
        "args [\"/bin/sh\"]",
    )
    .await;
    fails_with(
        &s.server,
        "no-bind",
        "CreateContainerConfigError",
        "SPARK_DRIVER_BIND_ADDRESS is not set",
    )
    .await;
    fails_with(
        &s.server,
        "bad-item",
        "CreateContainerConfigError",
        "configmap \"spark-drv-conf-map\" has no key \"spark.properties\"",
    )
    .await;
    fails_with(
        &s.server,
        "no-conf",
        "CreateContainerConfigError",
        "configmap \"spark-exec-conf-map\" not found",
    )
    .await;
    // Failed pods are deleted at once.
    pods.delete("driver", &DeleteParams::default())
        .await
        .unwrap();
    assert!(s.server.pod(NS, "driver").is_none());
}

/// A node daemon pod as `daemonset/deploy/daemonset.yaml` renders it (trimmed).
fn daemon_pod(name: &str, command: &str, init: bool) -> Pod {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "kshuffle-node",
                "image": "kshuffle-node:0.1.0",
                "command": [command],
                "args": ["--port=7337", "--allowed-root=/var/lib/kshuffle",
                         "--state-dir", "/var/lib/kshuffle-state"],
                "env": [
                    { "name": "MODE", "value": "sleep" },
                    { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                ],
                "volumeMounts": [
                    { "name": "shuffle-root", "mountPath": "/var/lib/kshuffle" },
                    { "name": "state", "mountPath": "/var/lib/kshuffle-state" },
                ],
            }],
            "volumes": [
                { "name": "shuffle-root", "hostPath": { "path": "/var/lib/kshuffle", "type": "DirectoryOrCreate" } },
                { "name": "state", "hostPath": { "path": "/var/lib/kshuffle-state" } },
            ],
        },
    }))
    .unwrap();
    if init {
        let spec = pod.spec.as_mut().unwrap();
        let mut prepare = spec.containers[0].clone();
        prepare.name = "prepare-host-dirs".into();
        prepare.image = Some("busybox".into());
        spec.init_containers = Some(vec![prepare]);
    }
    pod
}

#[tokio::test]
async fn a_registered_image_runs_its_program_with_mapped_args_on_the_node_address() {
    let s = setup("image").await;
    let pods = pods_api(&s.server);
    create(&pods, &daemon_pod("daemon", "kshuffle-node", false)).await;
    create(&pods, &daemon_pod("other-command", "/bin/sh", false)).await;
    create(&pods, &daemon_pod("with-init", "kshuffle-node", true)).await;

    let pod = wait_phase(&s.server, "daemon", "Running").await;
    let status = pod.status.unwrap();
    let node = pod.spec.unwrap().node_name.unwrap();
    // hostNetwork: the pod's address is its node's.
    assert_eq!(status.pod_ip, status.host_ip);
    let node_dir = s.dir.join("work/nodes").join(&node);
    let dir = s.kubelet.pod_dir(NS, "daemon");
    let args = read_when_there(&dir.join("args")).await;
    let root = node_dir.join("var/lib/kshuffle");
    let state = node_dir.join("var/lib/kshuffle-state");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--port=7337".to_owned(),
            format!("--allowed-root={}", root.display()),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ]
    );
    assert!(
        root.is_dir() && state.is_dir(),
        "hostPath dirs are per node"
    );
    let env = read_when_there(&dir.join("env")).await;
    assert!(
        env.lines().any(|l| l == format!("NODE_NAME={node}")),
        "{env}"
    );

    fails_with(
        &s.server,
        "other-command",
        "UnsupportedContainer",
        "registered program",
    )
    .await;
    // The busybox init container is on the host no-op list: it succeeds, then the daemon runs.
    let init = wait_phase(&s.server, "with-init", "Running").await;
    let st = init.status.unwrap();
    let ics = &st.init_container_statuses.unwrap()[0];
    let term = ics.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (ics.name.as_str(), term.exit_code),
        ("prepare-host-dirs", 0)
    );
    let env = read_when_there(&s.kubelet.pod_dir(NS, "with-init").join("env")).await;
    // No network namespace: the daemon is told to bind the pod's (here: the node's) address,
    // and finds the API server through the kubelet's kubeconfig.
    let host_ip = st.host_ip.unwrap();
    assert!(
        env.lines().any(|l| l == format!("KSHUFFLE_BIND={host_ip}")),
        "{env}"
    );
    let kubeconfig = env
        .lines()
        .find_map(|l| l.strip_prefix("KUBECONFIG="))
        .unwrap();
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    assert!(
        text.contains(&format!("server: {}", s.server.url())),
        "{text}"
    );
}

/// A pod of `containers` (name, image, command, MODE, extra fields) on the node of `node`.
fn pod_of(
    name: &str,
    policy: &str,
    inits: Vec<serde_json::Value>,
    containers: Vec<serde_json::Value>,
) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": "node-1",
            "hostNetwork": true,
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 5,
            "initContainers": inits,
            "containers": containers,
        },
    }))
    .unwrap()
}

fn ctr(name: &str, mode: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": "kshuffle-node",
        "command": ["kshuffle-node"],
        "env": [ { "name": "MODE", "value": mode }, { "name": "NAME", "value": name } ],
    })
}

fn status_of(server: &FakeApiServer, name: &str) -> Option<PodStatus> {
    server.pod(NS, name).and_then(|p| p.status)
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_main_containers() {
    let s = setup("init").await;
    let pods = pods_api(&s.server);
    create(
        &pods,
        &pod_of(
            "ordered",
            "Always",
            vec![ctr("first", "exit0"), ctr("second", "exit0")],
            vec![ctr("main-a", "sleep"), ctr("main-b", "sleep")],
        ),
    )
    .await;
    let pod = wait_phase(&s.server, "ordered", "Running").await;
    let dir = s.kubelet.pod_dir(NS, "ordered");
    // Each container wrote its pid file when it started; the init containers had exited
    // (in order) before the next one started: their pid files are older or equal in time,
    // and both main containers run, each its own process group.
    let pid = |c: &str| std::fs::read_to_string(dir.join(format!("{c}.pid")));
    let (a, b) = within("main pids", async {
        loop {
            if let (Ok(a), Ok(b)) = (pid("main-a"), pid("main-b"))
                && a.ends_with('\n')
                && b.ends_with('\n')
            {
                return (a, b);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_ne!(a, b);
    assert!(alive(a.trim()) && alive(b.trim()));
    let st = pod.status.unwrap();
    let inits = st.init_container_statuses.unwrap();
    assert_eq!(
        inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    let t = |i: usize| inits[i].state.as_ref().unwrap().terminated.clone().unwrap();
    assert_eq!((t(0).exit_code, t(1).exit_code), (0, 0));
    assert!(t(0).finished_at.unwrap().0 <= t(1).finished_at.unwrap().0);
    // The second init container started only after the first had finished.
    let first = modified(dir.join("first.pid"));
    let second = modified(dir.join("second.pid"));
    assert!(first <= second);
    assert_eq!(st.container_statuses.unwrap().len(), 2);

    // A failing init container under Never fails the pod, and no main container starts.
    create(
        &pods,
        &pod_of(
            "init-fails",
            "Never",
            vec![ctr("bad", "exit4")],
            vec![ctr("main", "sleep")],
        ),
    )
    .await;
    let st = failed(&s.server, "init-fails").await;
    assert!(st.message.unwrap().contains("\"bad\" exited with code 4"));
    assert!(
        !s.kubelet
            .pod_dir(NS, "init-fails")
            .join("main.pid")
            .exists()
    );

    // An init container of an image nobody registered fails the pod with a reason.
    let mut unknown = ctr("chown", "exit0");
    unknown["image"] = json!("alpine:3");
    unknown["command"] = json!(["sh", "-c", "chown 185 /x"]);
    create(
        &pods,
        &pod_of(
            "unknown-init",
            "Always",
            vec![unknown],
            vec![ctr("main", "sleep")],
        ),
    )
    .await;
    fails_with(
        &s.server,
        "unknown-init",
        "UnsupportedContainer",
        "\"chown\"",
    )
    .await;
}

#[tokio::test]
async fn restart_policy_always_restarts_a_dead_container_and_counts_it() {
    let s = setup("restart").await;
    let pods = pods_api(&s.server);
    create(
        &pods,
        &pod_of(
            "crashy",
            "Always",
            vec![],
            vec![ctr("steady", "sleep"), ctr("crash", "exit3")],
        ),
    )
    .await;
    // The first back-off is 1 s: one restart within the bound, the pod stays Running.
    let st = within(
        "a restart",
        until(|| {
            let st = status_of(&s.server, "crashy")?;
            let cs = st.container_statuses.as_ref()?;
            cs.iter()
                .any(|c| c.name == "crash" && c.restart_count >= 1)
                .then_some(st)
        }),
    )
    .await;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let cs = st.container_statuses.unwrap();
    let crash = cs.iter().find(|c| c.name == "crash").unwrap();
    let last = crash
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 3);
    let steady = cs.iter().find(|c| c.name == "steady").unwrap();
    assert_eq!(steady.restart_count, 0);
    assert!(steady.state.as_ref().unwrap().running.is_some());
    // Under Never the same pod ends Failed with both exit codes, nothing restarted.
    create(
        &pods,
        &pod_of(
            "once",
            "Never",
            vec![],
            vec![ctr("ok", "exit0"), ctr("crash", "exit3")],
        ),
    )
    .await;
    let st = failed(&s.server, "once").await;
    let codes: Vec<(String, i32, i32)> = st
        .container_statuses
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.name,
                c.state.unwrap().terminated.unwrap().exit_code,
                c.restart_count,
            )
        })
        .collect();
    assert_eq!(codes, [("ok".to_owned(), 0, 0), ("crash".to_owned(), 3, 0)]);
}

/// Answers every HTTP request with the status in `code`.
async fn http_server(ip: &str, code: Arc<AtomicU16>, hits: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let code = code.load(Ordering::SeqCst);
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(format!("HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    port
}

fn ready_of(server: &FakeApiServer, name: &str) -> Option<(bool, bool)> {
    let st = status_of(server, name)?;
    let pod_ready = st
        .conditions?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ctr_ready = st.container_statuses?.first()?.ready;
    Some((pod_ready, ctr_ready))
}

#[tokio::test]
async fn readiness_follows_the_http_probe_and_liveness_failures_restart() {
    let s = setup("probes").await;
    let pods = pods_api(&s.server);
    // node-1 is 127.0.1.1; a hostNetwork pod's probes go to that address.
    let code = Arc::new(AtomicU16::new(503));
    let hits = Arc::new(AtomicU16::new(0));
    let port = http_server("127.0.1.1", Arc::clone(&code), Arc::clone(&hits)).await;
    let mut c = ctr("probed", "sleep");
    c["ports"] = json!([{ "name": "admin", "containerPort": port }]);
    c["readinessProbe"] = json!({
        "httpGet": { "path": "/readyz", "port": "admin" },
        "periodSeconds": 5, "failureThreshold": 2,
    });
    create(&pods, &pod_of("probed", "Always", vec![], vec![c])).await;
    wait_phase(&s.server, "probed", "Running").await;
    // Probed and failing: running but not ready.
    within(
        "probes",
        until(|| (hits.load(Ordering::SeqCst) >= 2).then_some(())),
    )
    .await;
    assert_eq!(ready_of(&s.server, "probed"), Some((false, false)));
    code.store(200, Ordering::SeqCst);
    wait_ready(&s.server, "probed", (true, true), "ready").await;
    code.store(500, Ordering::SeqCst);
    wait_ready(&s.server, "probed", (false, false), "unready").await;

    // Liveness: a probe to a port nobody listens on kills the container; it is restarted.
    let closed_port = closed_port();
    let mut c = ctr("unlive", "sleep");
    c["livenessProbe"] = json!({
        "httpGet": { "path": "/healthz", "port": closed_port }, "failureThreshold": 1,
    });
    create(&pods, &pod_of("unlive", "Always", vec![], vec![c])).await;
    let st = within(
        "a liveness restart",
        until(|| {
            let st = status_of(&s.server, "unlive")?;
            (st.container_statuses.as_ref()?.first()?.restart_count >= 1).then_some(st)
        }),
    )
    .await;
    assert_eq!(st.phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn exec_and_tcp_socket_probes() {
    let s = setup("probes2").await;
    let pods = pods_api(&s.server);
    // A listener on node-1 (hostNetwork pods' address) for the tcpSocket liveness probe.
    let open = tokio::net::TcpListener::bind("127.0.1.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let mut c = ctr("probed", "sleep");
    c["readinessProbe"] = json!({ "exec": { "command": ["kshuffle-node", "probe"] } });
    c["livenessProbe"] = json!({ "tcpSocket": { "port": open_port }, "failureThreshold": 1 });
    create(&pods, &pod_of("probed", "Always", vec![], vec![c])).await;
    wait_phase(&s.server, "probed", "Running").await;
    let dir = s.kubelet.pod_dir(NS, "probed");
    // The exec probe runs the registered program with its args, and fails (exit 1) until
    // the file it tests exists.
    within(
        "exec probes",
        until(|| {
            let n = std::fs::read_to_string(dir.join("probed.probes")).ok()?;
            (n.lines().count() >= 2).then_some(())
        }),
    )
    .await;
    assert_eq!(ready_of(&s.server, "probed"), Some((false, false)));
    std::fs::write(dir.join("probed.healthy"), "").unwrap();
    wait_ready(&s.server, "probed", (true, true), "ready").await;
    std::fs::remove_file(dir.join("probed.healthy")).unwrap();
    wait_ready(&s.server, "probed", (false, false), "unready").await;
    // The tcpSocket liveness probe connects (the listener is open): never restarted.
    let restarts = status_of(&s.server, "probed")
        .unwrap()
        .container_statuses
        .unwrap()[0]
        .restart_count;
    assert_eq!(restarts, 0);

    // A tcpSocket liveness probe to a closed port kills the container; it is restarted.
    let closed_port = closed_port();
    let mut c = ctr("unlive", "sleep");
    c["livenessProbe"] = json!({ "tcpSocket": { "port": closed_port }, "failureThreshold": 1 });
    create(&pods, &pod_of("unlive", "Always", vec![], vec![c])).await;
    within(
        "a liveness restart",
        until(|| {
            let st = status_of(&s.server, "unlive")?;
            (st.container_statuses.as_ref()?.first()?.restart_count >= 1).then_some(())
        }),
    )
    .await;

    // An exec probe of anything but the registered program cannot run here.
    let mut c = ctr("shell", "sleep");
    c["readinessProbe"] = json!({ "exec": { "command": ["cat", "/tmp/healthy"] } });
    create(&pods, &pod_of("shell", "Always", vec![], vec![c])).await;
    fails_with(&s.server, "shell", "UnsupportedContainer", "exec probe").await;
    drop(open);
}

#[tokio::test]
async fn the_scheduler_honours_node_selectors() {
    let s = setup("selector").await;
    let pods = pods_api(&s.server);
    let with_selector = |name: &str, selector: serde_json::Value| {
        let mut pod = pod_of(name, "Always", vec![], vec![ctr("main", "sleep")]);
        let spec = pod.spec.as_mut().unwrap();
        spec.node_name = None;
        spec.node_selector = Some(serde_json::from_value(selector).unwrap());
        pod
    };
    // First fit would be node-1.
    create(
        &pods,
        &with_selector("on-2", json!({ "kubernetes.io/hostname": "node-2" })),
    )
    .await;
    create(
        &pods,
        &with_selector("nowhere", json!({ "disktype": "ssd" })),
    )
    .await;
    let pod = wait_phase(&s.server, "on-2", "Running").await;
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-2"));
    let st = within(
        "nowhere to be unschedulable",
        until(|| {
            let st = status_of(&s.server, "nowhere")?;
            st.conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                .then_some(st)
        }),
    )
    .await;
    assert_eq!(st.phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn env_from_config_maps_secrets_and_var_references() {
    let s = setup("envrefs").await;
    create_conf_map(&s.server).await;
    create_json::<Secret>(
        &s.server,
        json!({
            "metadata": { "name": "creds" },
            "data": { "token": "czNjcjN0" }, // "s3cr3t"
        }),
    )
    .await;
    let pods = pods_api(&s.server);
    let mut c = ctr("main", "sleep");
    c["args"] = json!(["--node=$(NODE)", "$$(NODE)", "$(UNSET)"]);
    c["env"] = json!([
        { "name": "NAME", "value": "main" },
        { "name": "MODE", "value": "sleep" },
        { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
        { "name": "WHERE", "value": "on-$(NODE)-$(LATER)" },
        { "name": "LATER", "value": "x" },
        { "name": "PROPS", "valueFrom": { "configMapKeyRef":
            { "name": "spark-exec-conf-map", "key": "spark.properties" } } },
        { "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "token" } } },
        { "name": "OPTIONAL", "valueFrom": { "secretKeyRef":
            { "name": "creds", "key": "nope", "optional": true } } },
        { "name": "APP", "valueFrom": { "fieldRef":
            { "fieldPath": "metadata.labels['spark-app-selector']" } } },
        { "name": "NOTE", "valueFrom": { "fieldRef":
            { "fieldPath": "metadata.annotations[\"absent\"]" } } },
    ]);
    let mut refs = pod_of("refs", "Always", vec![], vec![c.clone()]);
    refs.metadata.labels = Some([("spark-app-selector".into(), "spark-a1".into())].into());
    create(&pods, &refs).await;
    wait_phase(&s.server, "refs", "Running").await;
    let dir = s.kubelet.pod_dir(NS, "refs");
    let args = read_when_there(&dir.join("main.args")).await;
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["--node=node-1", "$(NODE)", "$(UNSET)"]
    );
    let env = read_when_there(&dir.join("main.env")).await;
    for want in [
        "WHERE=on-node-1-$(LATER)",
        "PROPS=spark.kubernetes.namespace=spark",
        "TOKEN=s3cr3t",
        "APP=spark-a1",
        // A label or annotation that is not there resolves to "" (as on a real kubelet).
        "NOTE=",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in\n{env}");
    }
    assert!(!env.lines().any(|l| l.starts_with("OPTIONAL=")), "{env}");

    // A key that is not there (and not optional) fails the pod with a reason.
    c["env"][6]["valueFrom"]["secretKeyRef"]["key"] = json!("missing");
    create(&pods, &pod_of("missing-key", "Always", vec![], vec![c])).await;
    fails_with(
        &s.server,
        "missing-key",
        "CreateContainerConfigError",
        "secret \"creds\" or its key \"missing\"",
    )
    .await;
}

#[tokio::test]
async fn env_from_config_maps_and_secrets_with_prefixes_under_env() {
    let s = setup("envfrom").await;
    create_json::<ConfigMap>(
        &s.server,
        json!({
            "metadata": { "name": "settings" },
            "data": { "LEVEL": "debug", "SHARED": "from-cm", "1X": "skipped" },
        }),
    )
    .await;
    create_json::<Secret>(
        &s.server,
        json!({
            "metadata": { "name": "creds" },
            "data": { "token": "czNjcjN0", "SHARED": "ZnJvbS1zZWNyZXQ=" }, // "s3cr3t", "from-secret"
        }),
    )
    .await;
    let pods = pods_api(&s.server);
    let mut c = ctr("main", "sleep");
    c["envFrom"] = json!([
        { "configMapRef": { "name": "settings" } },
        { "secretRef": { "name": "creds" }, "prefix": "S_" },
        // A later source wins over an earlier one for the same name.
        { "secretRef": { "name": "creds" } },
        { "configMapRef": { "name": "absent", "optional": true } },
    ]);
    c["env"] = json!([
        { "name": "NAME", "value": "main" },
        { "name": "MODE", "value": "sleep" },
        // env overrides envFrom, and may refer to it.
        { "name": "LEVEL", "value": "info-$(S_token)" },
    ]);
    create(&pods, &pod_of("from", "Always", vec![], vec![c.clone()])).await;
    wait_phase(&s.server, "from", "Running").await;
    let env = read_when_there(&s.kubelet.pod_dir(NS, "from").join("main.env")).await;
    for want in [
        "LEVEL=info-s3cr3t",
        "S_token=s3cr3t",
        "S_SHARED=from-secret",
        "SHARED=from-secret",
        "token=s3cr3t",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in\n{env}");
    }
    assert!(!env.lines().any(|l| l.starts_with("1X=")), "{env}");

    // A missing source that is not optional fails the pod with a reason.
    c["envFrom"][3]["configMapRef"]["optional"] = json!(false);
    create(&pods, &pod_of("from-missing", "Always", vec![], vec![c])).await;
    fails_with(
        &s.server,
        "from-missing",
        "CreateContainerConfigError",
        "envFrom configmap \"absent\" not found",
    )
    .await;
}

#[tokio::test]
async fn pre_stop_hooks_run_before_sigterm() {
    let s = setup("prestop").await;
    let pods = pods_api(&s.server);
    let code = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicU16::new(0));
    let port = http_server("127.0.1.1", Arc::clone(&code), Arc::clone(&hits)).await;
    let mut exec = ctr("exec", "sleep");
    exec["lifecycle"] =
        json!({ "preStop": { "exec": { "command": ["kshuffle-node", "prestop"] } } });
    let mut http = ctr("http", "sleep");
    http["lifecycle"] = json!({ "preStop": { "httpGet": { "path": "/drain", "port": port } } });
    create(&pods, &pod_of("hooked", "Always", vec![], vec![exec, http])).await;
    wait_phase(&s.server, "hooked", "Running").await;
    let dir = s.kubelet.pod_dir(NS, "hooked");
    read_when_there(&dir.join("exec.pid")).await;
    read_when_there(&dir.join("http.pid")).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    pods.delete("hooked", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&s.server, "hooked").await;
    // The exec hook finished (it takes 0.3 s) before the container got SIGTERM.
    let hook_done = modified(dir.join("exec.prestop"));
    let termed = modified(dir.join("exec.signals"));
    assert!(hook_done <= termed, "SIGTERM before the preStop hook ended");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the httpGet hook");
}

/// A container that is one long-lived process (`exec`, so no child of its own is left behind).
const SLEEPER: &str = "#!/bin/sh\necho $$ > pid\nexec sleep 600\n";

/// The process owning the kubelet (here the `fake-apiserver` binary) SIGKILLed: no
/// `Drop`, no signal handler runs, yet the kernel kills the container it started, because
/// every container is forked with a parent-death signal on a thread that lives as long as the
/// process.
#[tokio::test]
async fn containers_die_when_the_kubelets_process_is_killed_outright() {
    let dir = std::env::temp_dir().join(format!("kshuffle-kubelet-sigkill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sleeper = dir.join("sleeper");
    write_exe(&sleeper, SLEEPER);
    let pod = dir.join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sleeper\n  namespace: default\n\
         spec:\n  containers:\n  - name: main\n    image: sleeper:1\n",
    )
    .unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let daemon = std::process::Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .arg("--work-dir")
        .arg(&work)
        .arg("--image")
        .arg(format!("sleeper={}", sleeper.display()))
        .arg("--apply")
        .arg(&pod)
        .arg("--no-request-log")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    // `pod_dir` needs only the work dir; the binary canonicalizes it.
    let work = std::fs::canonicalize(&work).unwrap();
    let pid_file = ProcessKubelet::new(&dir, &work)
        .pod_dir("default", "sleeper")
        .join("pid");
    let pid = within("the container to start", read_when_there(&pid_file)).await;
    let pid = pid.trim().to_owned();
    assert!(running(&pid));

    daemon.0.kill().unwrap(); // SIGKILL
    daemon.0.wait().unwrap();
    within(
        &format!("container process {pid} to die with the kubelet's process"),
        until(|| (!running(&pid)).then_some(())),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process SIGKILLed (and reaped) when dropped, a failing test included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` exists and is not a zombie (an orphan killed here is reaped by
/// whatever adopted it, which may take its time).
fn running(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

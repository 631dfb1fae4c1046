//! The webhook's decisions, from an `AdmissionReview` body shaped as the API server sends it for
//! a Spark 4.x executor pod: the returned JSONPatch is applied with the `json-patch` crate and the
//! resulting pod is asserted field by field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::prelude::{BASE64_STANDARD, Engine as _};
use k8s_openapi::api::core::v1::{Container, Pod};
use kshuffle_sidecar::admission::{self, Verdict};
use kshuffle_sidecar::inject::{self, Config, Decision, Skip, Unsafe};
use serde_json::{Value, json};

const REVIEW: &str = include_str!("fixtures/executor-review.json");
const LOCAL_DIR: &str = "/var/data/spark-0d3c6a1e-5b7f-4e2a-9c8d-1f0e2b3a4c5d";
const APP_ID: &str = "spark-4a1f0c6e2b9d4c7a8e3f5b1d2c6a9e0f";

fn review_value() -> Value {
    serde_json::from_str(REVIEW).unwrap()
}

/// The review with its pod changed by `edit`.
fn review_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review = review_value();
    edit(&mut review["request"]["object"]);
    serde_json::to_vec(&review).unwrap()
}

fn config() -> Config {
    Config {
        image: "registry.example/kshuffle-sidecar:0.1.0".to_owned(),
        ..Config::default()
    }
}

/// Runs the review, checks the envelope, and returns the pod after applying the patch (if any),
/// plus the response.
fn admit(body: &[u8]) -> (Value, Value, Verdict) {
    admit_with(body, &config())
}

/// [`admit`] with the webhook configured as `config`.
fn admit_with(body: &[u8], config: &Config) -> (Value, Value, Verdict) {
    let reviewed = admission::review(body, config).unwrap();
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let request: Value = serde_json::from_slice(body).unwrap();
    let response = answer["response"].clone();
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "uid must be echoed"
    );
    assert_eq!(response["allowed"], true, "the webhook never denies a pod");
    let mut pod = request["request"]["object"].clone();
    if let Some(patch) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = BASE64_STANDARD.decode(patch.as_str().unwrap()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    (pod, response, reviewed.verdict)
}

fn as_pod(value: &Value) -> Pod {
    serde_json::from_value(value.clone()).unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers.iter().find(|c| c.name == name).unwrap()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

#[test]
fn spark_executor_gets_the_sidecar_on_its_local_dir() {
    let (patched, response, verdict) = admit(REVIEW.as_bytes());
    assert!(
        matches!(verdict, Verdict::Decided(Decision::Inject(_))),
        "{verdict:?}"
    );
    assert!(response.get("warnings").is_none());
    let original = as_pod(&review_value()["request"]["object"]);
    let pod = as_pod(&patched);
    let spec = pod.spec.as_ref().unwrap();

    // The executor container is untouched: Spark already set SPARK_LOCAL_DIRS to the mount.
    assert_eq!(
        container(&pod, "spark-kubernetes-executor"),
        container(&original, "spark-kubernetes-executor")
    );
    assert_eq!(spec.containers.len(), 2);

    let sidecar = container(&pod, "kshuffle");
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example/kshuffle-sidecar:0.1.0")
    );
    assert_eq!(
        sidecar.args.as_ref().unwrap(),
        &vec![
            "serve".to_owned(),
            "--port=7337".to_owned(),
            "--admin-port=7338".to_owned(),
            "--state-dir=/var/lib/kshuffle".to_owned(),
            "--log-level=info".to_owned(),
            format!("--allowed-root={LOCAL_DIR}"),
        ]
    );
    // The local dir is shared at the same path; state on its own emptyDir; the token copied.
    let mounts: Vec<(&str, &str, Option<bool>)> = sidecar
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("spark-local-dir-1", LOCAL_DIR, None),
            ("kshuffle-state", "/var/lib/kshuffle", None),
            (
                "kube-api-access-x7k2p",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                Some(true)
            ),
        ]
    );
    let state = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kshuffle-state")
        .unwrap();
    assert!(state.empty_dir.is_some());
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 4);

    // Downward API: app id from the label, namespace and name of the pod.
    let field = |name: &str| {
        env_value(sidecar, name)
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(
        field("KSHUFFLE_APP_ID"),
        "metadata.labels['spark-app-selector']"
    );
    assert_eq!(field("KSHUFFLE_POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(field("KSHUFFLE_POD_NAME"), "metadata.name");
    assert!(env_value(sidecar, "_SPARK_AUTH_SECRET").is_none());
    // Cluster mode (an ownerReference to the driver pod): the driver pod is watched (also by
    // its name), the driver's endpoint is not given.
    assert_eq!(
        env_value(sidecar, "KSHUFFLE_DRIVER_POD")
            .unwrap()
            .value
            .as_deref(),
        Some("wordcount-8f1c2a9b7d3e4f50-driver")
    );
    assert!(env_value(sidecar, "KSHUFFLE_DRIVER_URL").is_none());

    let ports: Vec<(Option<&str>, i32)> = sidecar
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        vec![(Some("kshuffle"), 7337), (Some("kshuffle-admin"), 7338)]
    );
    let readiness = sidecar
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    let liveness = sidecar
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/healthz"));

    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, Some(185));
    assert_eq!(security.run_as_group, Some(185));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    assert_eq!(spec.termination_grace_period_seconds, Some(3600));
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get("kshuffle.io/injected").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        annotations
            .get("kubectl.kubernetes.io/default-container")
            .map(String::as_str),
        Some("spark-kubernetes-executor")
    );
    // Everything else is as Spark made it.
    assert_eq!(pod.metadata.labels, original.metadata.labels);
    assert_eq!(
        pod.metadata.owner_references,
        original.metadata.owner_references
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
}

#[test]
fn injecting_twice_is_injecting_once() {
    let (once, _, _) = admit(REVIEW.as_bytes());
    let second = review_with(|pod| *pod = once.clone());
    let (twice, response, verdict) = admit(&second);
    assert_eq!(
        verdict,
        Verdict::Decided(Decision::Skip(Skip::AlreadyInjected))
    );
    assert!(response.get("patch").is_none());
    assert_eq!(twice, once);
}

#[test]
fn opted_out_and_non_executor_pods_are_untouched() {
    let original = review_value()["request"]["object"].clone();
    let opted_out =
        review_with(|pod| pod["metadata"]["labels"]["kshuffle.io/inject"] = json!("false"));
    let (pod, response, verdict) = admit(&opted_out);
    assert_eq!(verdict, Verdict::Decided(Decision::Skip(Skip::OptedOut)));
    assert!(response.get("patch").is_none());
    assert_eq!(pod["spec"], original["spec"]);

    let driver = review_with(|pod| pod["metadata"]["labels"]["spark-role"] = json!("driver"));
    let (pod, response, verdict) = admit(&driver);
    assert_eq!(verdict, Verdict::Decided(Decision::Skip(Skip::NotExecutor)));
    assert!(response.get("patch").is_none());
    assert_eq!(pod["spec"], original["spec"]);

    let unlabelled = review_with(|pod| {
        pod["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("spark-role");
    });
    let (_, _, verdict) = admit(&unlabelled);
    assert_eq!(verdict, Verdict::Decided(Decision::Skip(Skip::NotExecutor)));

    // An explicit opt-in label on the pod is fine (the namespace selector is the API server's).
    let opted_in =
        review_with(|pod| pod["metadata"]["labels"]["kshuffle.io/inject"] = json!("true"));
    let (_, _, verdict) = admit(&opted_in);
    assert!(matches!(verdict, Verdict::Decided(Decision::Inject(_))));
}

/// Runs a review that must be admitted unchanged because it is unsafe, and returns the reason.
fn unsafe_reason(body: &[u8]) -> Unsafe {
    let original: Value = serde_json::from_slice(body).unwrap();
    let (pod, response, verdict) = admit(body);
    assert!(response.get("patch").is_none());
    assert_eq!(pod, original["request"]["object"]);
    let warning = response["warnings"][0].as_str().unwrap().to_owned();
    match verdict {
        Verdict::Decided(Decision::Unsafe(reason)) => {
            assert!(warning.contains(&reason.to_string()), "{warning}");
            reason
        }
        other => panic!("expected unsafe, got {other:?}"),
    }
}

#[test]
fn pods_that_cannot_be_patched_safely_are_admitted_unchanged() {
    let foreign = review_with(|pod| {
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "kshuffle", "image": "busybox"}));
    });
    assert_eq!(
        unsafe_reason(&foreign),
        Unsafe::NameTaken {
            what: "container",
            name: "kshuffle".into()
        }
    );

    let init = review_with(|pod| {
        pod["spec"]["initContainers"] = json!([{"name": "kshuffle", "image": "busybox"}])
    });
    assert_eq!(
        unsafe_reason(&init),
        Unsafe::NameTaken {
            what: "container",
            name: "kshuffle".into()
        }
    );

    let port = review_with(|pod| {
        pod["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"containerPort": 7337}));
    });
    assert_eq!(
        unsafe_reason(&port),
        Unsafe::PortTaken {
            container: "spark-kubernetes-executor".into(),
            port: 7337
        }
    );

    let admin = review_with(|pod| {
        pod["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"containerPort": 7338}));
    });
    assert!(matches!(
        unsafe_reason(&admin),
        Unsafe::PortTaken { port: 7338, .. }
    ));

    let host = review_with(|pod| pod["spec"]["hostNetwork"] = json!(true));
    assert_eq!(unsafe_reason(&host), Unsafe::HostNetwork);

    let no_app = review_with(|pod| {
        pod["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("spark-app-selector");
    });
    assert_eq!(unsafe_reason(&no_app), Unsafe::NoAppId);

    let state = review_with(|pod| {
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "kshuffle-state", "emptyDir": {}}));
    });
    assert_eq!(
        unsafe_reason(&state),
        Unsafe::NameTaken {
            what: "volume",
            name: "kshuffle-state".into()
        }
    );

    let no_executor = review_with(|pod| {
        let c = &mut pod["spec"]["containers"][0];
        c["name"] = json!("main");
        c["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "SPARK_EXECUTOR_ID");
    });
    assert_eq!(unsafe_reason(&no_executor), Unsafe::NoExecutorContainer);

    // Local dirs set by env but on no spark-local-dir-N volume: not shareable.
    let unshared = review_with(|pod| {
        let c = &mut pod["spec"]["containers"][0];
        c["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["name"] != "spark-local-dir-1");
    });
    assert_eq!(unsafe_reason(&unshared), Unsafe::UnsharedLocalDirs);
}

#[test]
fn a_pod_without_local_dir_volumes_gets_a_shared_empty_dir() {
    // A hand-made executor pod: no volumes, no annotations, no env for local dirs, the
    // executor found by SPARK_EXECUTOR_ID under another container name.
    let body = review_with(|pod| {
        let spec = pod["spec"].as_object_mut().unwrap();
        spec.remove("volumes");
        spec.remove("terminationGracePeriodSeconds");
        let c = &mut pod["spec"]["containers"][0];
        c["name"] = json!("executor");
        c.as_object_mut().unwrap().remove("volumeMounts");
        c["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "SPARK_LOCAL_DIRS");
    });
    let (patched, _, verdict) = admit(&body);
    assert!(
        matches!(verdict, Verdict::Decided(Decision::Inject(_))),
        "{verdict:?}"
    );
    let pod = as_pod(&patched);
    let spec = pod.spec.as_ref().unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, vec!["spark-local-dir-1", "kshuffle-state"]);
    let exec = container(&pod, "executor");
    let mount = &exec.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("spark-local-dir-1", "/var/data/kshuffle")
    );
    assert_eq!(
        env_value(exec, "SPARK_LOCAL_DIRS")
            .unwrap()
            .value
            .as_deref(),
        Some("/var/data/kshuffle")
    );
    let sidecar = container(&pod, "kshuffle");
    assert!(
        sidecar
            .args
            .as_ref()
            .unwrap()
            .contains(&"--allowed-root=/var/data/kshuffle".to_owned())
    );
    assert_eq!(
        sidecar.volume_mounts.as_ref().unwrap()[0].mount_path,
        "/var/data/kshuffle"
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(3600));
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("kubectl.kubernetes.io/default-container")
            .map(String::as_str),
        Some("executor")
    );
}

#[test]
fn settings_of_the_pod_are_respected() {
    // A longer grace period is kept; the executor's user and auth secret are carried over;
    // several local dirs are all served.
    let body = review_with(|pod| {
        pod["spec"]["terminationGracePeriodSeconds"] = json!(7200);
        pod["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/default-container": "x", "team": "data"});
        let c = &mut pod["spec"]["containers"][0];
        c["securityContext"] = json!({"runAsUser": 1000, "runAsGroup": 2000});
        c["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "_SPARK_AUTH_SECRET", "value": "s3cr3t"}));
        c["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "spark-local-dir-2", "mountPath": "/data2", "subPath": "exec", "readOnly": false}));
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "spark-local-dir-2", "hostPath": {"path": "/mnt/disk2"}}));
    });
    let (patched, _, _) = admit(&body);
    let pod = as_pod(&patched);
    assert_eq!(
        pod.spec.as_ref().unwrap().termination_grace_period_seconds,
        Some(7200)
    );
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations
            .get("kubectl.kubernetes.io/default-container")
            .map(String::as_str),
        Some("x")
    );
    assert_eq!(annotations.get("team").map(String::as_str), Some("data"));
    assert!(annotations.contains_key("kshuffle.io/injected"));
    let sidecar = container(&pod, "kshuffle");
    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1000), Some(2000))
    );
    assert_eq!(
        env_value(sidecar, "_SPARK_AUTH_SECRET")
            .unwrap()
            .value
            .as_deref(),
        Some("s3cr3t")
    );
    let args = sidecar.args.as_ref().unwrap();
    assert!(args.contains(&format!("--allowed-root={LOCAL_DIR}")));
    assert!(args.contains(&"--allowed-root=/data2".to_owned()));
    let data2 = sidecar
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "spark-local-dir-2")
        .unwrap();
    assert_eq!(data2.mount_path, "/data2");
    assert_eq!(
        data2.sub_path.as_deref(),
        Some("exec"),
        "same files as the executor sees"
    );

    // The pod's own runAsUser is inherited (not overridden) when the executor sets none.
    let body = review_with(|pod| {
        pod["spec"]["securityContext"] = json!({"runAsUser": 3000, "fsGroup": 3000})
    });
    let (patched, _, _) = admit(&body);
    let security = container(&as_pod(&patched), "kshuffle")
        .security_context
        .clone()
        .unwrap();
    assert_eq!(security.run_as_user, None);
    assert_eq!(security.run_as_group, Some(185));
}

#[test]
fn malformed_reviews_get_an_error_not_a_crash() {
    let config = config();
    for (body, kind) in [
        (&b"not json"[..], "malformed"),
        (b"{}", "malformed"),
        (b"[1,2]", "malformed"),
        (br#"{"apiVersion":"v1","kind":"Pod"}"#, "wrong_type"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no_request",
        ),
    ] {
        let err = admission::review(body, &config).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(!err.to_string().is_empty());
    }
    // A truncated body at every length fails cleanly (never panics).
    for len in 0..REVIEW.len() - 1 {
        assert!(admission::review(&REVIEW.as_bytes()[..len], &config).is_err());
    }
    // v1beta1 is not served (the configuration lists only v1).
    let mut review = review_value();
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let err = admission::review(&serde_json::to_vec(&review).unwrap(), &config).unwrap_err();
    assert_eq!(err.kind(), "wrong_type");
    assert!(err.to_string().contains("v1beta1"), "{err}");
    // An empty uid cannot be answered either.
    let mut review = review_value();
    review["request"]["uid"] = json!("");
    let err = admission::review(&serde_json::to_vec(&review).unwrap(), &config).unwrap_err();
    assert_eq!(err.kind(), "no_request");
}

#[test]
fn reviews_that_are_not_a_readable_pod_create_are_allowed_unchanged() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|r: &mut Value| r["request"]["operation"] = json!("UPDATE")),
            "not CREATE",
        ),
        (
            Box::new(|r: &mut Value| r["request"]["kind"]["kind"] = json!("Secret")),
            "not a core/v1 Pod",
        ),
        (
            Box::new(|r: &mut Value| r["request"]["object"]["spec"] = json!("garbage")),
            "not a valid Pod",
        ),
        (
            Box::new(|r: &mut Value| r["request"]["object"]["spec"]["containers"] = json!(7)),
            "not a valid Pod",
        ),
        (
            Box::new(|r: &mut Value| r["request"]["object"] = Value::Null),
            "no object",
        ),
    ];
    for (edit, reason) in cases {
        let mut review = review_value();
        edit(&mut review);
        let body = serde_json::to_vec(&review).unwrap();
        let reviewed = admission::review(&body, &config()).unwrap();
        let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert!(answer["response"].get("patch").is_none());
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains(reason), "{warning} should say {reason}");
        assert!(matches!(reviewed.verdict, Verdict::NotAPod(_)));
    }
}

#[test]
fn mutate_is_pure_and_deterministic() {
    let pod = as_pod(&review_value()["request"]["object"]);
    let a = inject::mutate(&pod, &config());
    let b = inject::mutate(&pod, &config());
    assert_eq!(a, b);
    assert_eq!(
        APP_ID,
        pod.metadata.labels.as_ref().unwrap()["spark-app-selector"]
    );
}

/// Single-byte corruptions of a real review (every 17th byte, three replacements, so the test
/// stays quick in a debug build): never a panic, and any patch returned applies
/// cleanly to the object it was computed from (the API server rejects patches that do not).
#[test]
fn corrupted_reviews_never_panic_and_every_patch_applies() {
    let config = config();
    let original = REVIEW.as_bytes();
    let mut patched = 0;
    for i in (0..original.len()).step_by(17) {
        for replacement in [b'"', b'x', b'}'] {
            let mut body = original.to_vec();
            body[i] = replacement;
            let Ok(reviewed) = admission::review(&body, &config) else {
                continue;
            };
            let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
            assert_eq!(answer["response"]["allowed"], true);
            if let Some(patch) = answer["response"].get("patch") {
                let request: Value = serde_json::from_slice(&body).unwrap();
                let mut pod = request["request"]["object"].clone();
                let bytes = BASE64_STANDARD.decode(patch.as_str().unwrap()).unwrap();
                let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
                json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("byte {i}: {e}"));
                let _: Pod = serde_json::from_value(pod).unwrap();
                patched += 1;
            }
        }
    }
    assert!(
        patched > 100,
        "most corruptions of string contents still inject ({patched})"
    );
}

#[test]
fn an_auth_secret_given_by_reference_is_copied_as_a_reference() {
    // A pod template may give _SPARK_AUTH_SECRET as a secretKeyRef: the kubelet resolves it
    // for the sidecar just as for the executor.
    let body = review_with(|pod| {
        pod["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "_SPARK_AUTH_SECRET", "valueFrom": {"secretKeyRef": {"name": "spark-auth", "key": "secret"}}}));
    });
    let (patched, _, _) = admit(&body);
    let pod = as_pod(&patched);
    let env = env_value(container(&pod, "kshuffle"), "_SPARK_AUTH_SECRET").unwrap();
    assert!(env.value.is_none());
    let key_ref = env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap();
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("spark-auth", "secret")
    );
}

#[test]
fn in_client_mode_the_sidecar_gets_the_driver_endpoint() {
    // Client mode: Spark's driver is not a pod, so the executor pod has no ownerReference.
    let body = review_with(|pod| {
        pod["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
    });
    let (patched, _, _) = admit(&body);
    let pod = as_pod(&patched);
    let url = env_value(container(&pod, "kshuffle"), "KSHUFFLE_DRIVER_URL").unwrap();
    assert_eq!(
        url.value.as_deref(),
        Some(
            "spark://CoarseGrainedScheduler@wordcount-8f1c2a9b7d3e4f50-driver-svc.spark-jobs.svc:7078"
        )
    );
    assert!(env_value(container(&pod, "kshuffle"), "KSHUFFLE_DRIVER_POD").is_none());
    // An owner that is not a Pod is no driver pod either.
    let body = review_with(|pod| {
        pod["metadata"]["ownerReferences"][0]["kind"] = json!("ConfigMap");
    });
    let (patched, _, _) = admit(&body);
    let pod = as_pod(&patched);
    assert!(env_value(container(&pod, "kshuffle"), "KSHUFFLE_DRIVER_URL").is_some());
    assert!(env_value(container(&pod, "kshuffle"), "KSHUFFLE_DRIVER_POD").is_none());
}

/// `--sidecar-tls-secret`: the sidecar mounts that Secret read-only (not by subPath, so
/// renewals reach it) and serves TLS from its two files; the executor is untouched. A pod
/// that already has a volume of that name is left alone. The real binary accepts the args.
#[test]
fn with_a_tls_secret_the_sidecar_serves_tls_from_it() {
    let config = Config {
        tls_secret: Some("shuffle-tls".to_owned()),
        ..config()
    };
    let (patched, _, verdict) = admit_with(REVIEW.as_bytes(), &config);
    assert!(
        matches!(verdict, Verdict::Decided(Decision::Inject(_))),
        "{verdict:?}"
    );
    let original = as_pod(&review_value()["request"]["object"]);
    let pod = as_pod(&patched);
    assert_eq!(
        container(&pod, "spark-kubernetes-executor"),
        container(&original, "spark-kubernetes-executor")
    );
    let sidecar = container(&pod, "kshuffle");
    let args = sidecar.args.clone().unwrap();
    for flag in [
        "--tls-cert-file=/etc/kshuffle/tls/tls.crt",
        "--tls-key-file=/etc/kshuffle/tls/tls.key",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} not in {args:?}");
    }
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "kshuffle-tls")
        .expect("the Secret is mounted");
    assert_eq!(mount.mount_path, "/etc/kshuffle/tls");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.sub_path, None);
    let volume = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kshuffle-tls")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("shuffle-tls")
    );

    // The binary parses every arg before `--help` (a bad one exits non-zero).
    let accepts = |args: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(accepts(&args), "{args:?}");
    let mut bad = args.clone();
    bad.push("--tls-cert-fil=x".to_owned());
    assert!(!accepts(&bad));

    // Without the option, none of it.
    let (plain, _, _) = admit(REVIEW.as_bytes());
    let plain = as_pod(&plain);
    let sidecar = container(&plain, "kshuffle");
    assert!(
        !sidecar
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--tls"))
    );
    assert!(
        !sidecar
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "kshuffle-tls")
    );

    // A pod with its own volume of that name is not patched.
    let taken = review_with(|pod| {
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "kshuffle-tls", "emptyDir": {}}));
    });
    let reviewed = admission::review(&taken, &config).unwrap();
    assert_eq!(
        reviewed.verdict,
        Verdict::Decided(Decision::Unsafe(Unsafe::NameTaken {
            what: "volume",
            name: "kshuffle-tls".into()
        }))
    );
}

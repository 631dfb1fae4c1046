//! The sidecar deployment as it would be applied: `kubectl kustomize sidecar/deploy` (kubectl's
//! built-in kustomize works offline, no cluster), every object parsed into its k8s-openapi type,
//! and the fields that matter asserted: who gets injected (the webhooks' selectors evaluated
//! against namespace and pod labels), failure policy, TLS wiring, RBAC exactly, and the
//! webhook Deployment's security settings and flags (run through the real binary's parser).
//! `KUBECTL` overrides the kubectl path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kshuffle_testkit::kustomize;
use serde_json::Value;

const NAMESPACE: &str = "kshuffle-sidecar";
const IMAGE: &str = "ghcr.io/kshuffle/kshuffle-sidecar:0.1.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn render() -> Vec<Value> {
    render_dir(&deploy_dir())
}

fn render_dir(dir: &Path) -> Vec<Value> {
    kustomize::render(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = kustomize::one(docs, kind).unwrap();
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
}

// === label selectors, as the API server evaluates them ===

fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Names of the webhooks the API server would call for a pod with `pod` labels in namespace
/// `ns` (with its automatic `kubernetes.io/metadata.name` label) labelled `ns_labels`.
fn called<'a>(
    hooks: &'a [MutatingWebhook],
    ns: &str,
    ns_labels: &[(&str, &str)],
    pod: &[(&str, &str)],
) -> Vec<&'a str> {
    let mut ns_labels = labels(ns_labels);
    ns_labels.insert("kubernetes.io/metadata.name".to_owned(), ns.to_owned());
    let pod = labels(pod);
    hooks
        .iter()
        .filter(|h| {
            matches(h.namespace_selector.as_ref(), &ns_labels)
                && matches(h.object_selector.as_ref(), &pod)
        })
        .map(|h| h.name.as_str())
        .collect()
}

#[test]
fn opt_in_is_namespace_or_pod_and_each_pod_is_sent_at_most_once() {
    let docs = render();
    let config: MutatingWebhookConfiguration = one(&docs, "MutatingWebhookConfiguration");
    let hooks = config.webhooks.unwrap();
    let exec = [("spark-role", "executor")];
    let enabled = [("kshuffle.io/inject", "enabled")];
    let disabled = [("kshuffle.io/inject", "disabled")];
    type Labels<'a> = Vec<(&'a str, &'a str)>;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Labels<'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        // namespace opt-in
        (
            "spark-jobs",
            &enabled,
            exec.to_vec(),
            vec!["namespace.sidecar.kshuffle.io"],
        ),
        (
            "spark-jobs",
            &enabled,
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "true")],
            vec!["namespace.sidecar.kshuffle.io"],
        ),
        // the pod label wins over the namespace: opt-out
        (
            "spark-jobs",
            &enabled,
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "false")],
            vec![],
        ),
        // pod opt-in in a namespace without the label
        (
            "team-a",
            &[],
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "true")],
            vec!["pod.sidecar.kshuffle.io"],
        ),
        ("team-a", &[], exec.to_vec(), vec![]),
        // an administrator's lock wins over the pod
        (
            "team-b",
            &disabled,
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "true")],
            vec![],
        ),
        // drivers and other pods never
        (
            "spark-jobs",
            &enabled,
            vec![("spark-role", "driver")],
            vec![],
        ),
        ("spark-jobs", &enabled, vec![("app", "web")], vec![]),
        // never the webhook's own namespace or kube-system, whatever their labels
        (
            NAMESPACE,
            &enabled,
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "true")],
            vec![],
        ),
        (
            "kube-system",
            &[],
            vec![("spark-role", "executor"), ("kshuffle.io/inject", "true")],
            vec![],
        ),
    ];
    for (ns, ns_labels, pod, want) in cases {
        assert_eq!(
            called(&hooks, ns, ns_labels, &pod),
            want,
            "ns {ns} {ns_labels:?}, pod {pod:?}"
        );
    }
    // The webhook's own namespace carries the lock too.
    let namespace: Namespace = one(&docs, "Namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(
        namespace.metadata.labels.unwrap()["kshuffle.io/inject"],
        "disabled"
    );
}

#[test]
fn webhook_configuration_policy_and_tls_wiring() {
    let docs = render();
    let config: MutatingWebhookConfiguration = one(&docs, "MutatingWebhookConfiguration");
    let service: Service = one(&docs, "Service");
    let deployment: Deployment = one(&docs, "Deployment");
    let certificate = docs.iter().find(|d| d["kind"] == "Certificate").unwrap();
    let issuer = docs.iter().find(|d| d["kind"] == "Issuer").unwrap();

    // cert-manager injects the CA of this Certificate into every caBundle.
    let inject_from =
        &config.metadata.annotations.as_ref().unwrap()["cert-manager.io/inject-ca-from"];
    assert_eq!(
        inject_from,
        &format!(
            "{NAMESPACE}/{}",
            certificate["metadata"]["name"].as_str().unwrap()
        )
    );
    assert_eq!(certificate["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    let service_dns = format!(
        "{}.{NAMESPACE}.svc",
        service.metadata.name.as_deref().unwrap()
    );
    let dns: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        dns.contains(&service_dns.as_str()),
        "{dns:?} must contain {service_dns}"
    );
    // The Secret cert-manager writes is the one the webhook mounts and reads.
    let secret = certificate["spec"]["secretName"].as_str().unwrap();
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let tls_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.secret.is_some())
        .unwrap();
    assert_eq!(
        tls_volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some(secret)
    );
    let container = &pod.containers[0];
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == tls_volume.name)
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    let args = container.args.as_ref().unwrap();
    assert!(args.contains(&format!("--tls-cert-file={}/tls.crt", mount.mount_path)));
    assert!(args.contains(&format!("--tls-key-file={}/tls.key", mount.mount_path)));

    let hooks = config.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in &hooks {
        assert_eq!(
            hook.failure_policy.as_deref(),
            Some("Fail"),
            "{}",
            hook.name
        );
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, vec!["v1".to_owned()]);
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("Never"));
        assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
        assert!(
            hook.client_config.ca_bundle.is_none(),
            "cert-manager fills it"
        );
        let target = hook.client_config.service.as_ref().unwrap();
        assert_eq!(Some(target.name.as_str()), service.metadata.name.as_deref());
        assert_eq!(target.namespace, NAMESPACE);
        assert_eq!(target.path.as_deref(), Some("/mutate"));
        assert_eq!(target.port, Some(443));
        let rules = hook.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );
        assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(rules[0].scope.as_deref(), Some("Namespaced"));
    }
    // Service → the container's HTTPS port.
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 443);
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("https".to_owned()))
    );
    let https = container
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .unwrap();
    assert_eq!(https.container_port, 8443);
    let pod_labels = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in service.spec.as_ref().unwrap().selector.clone().unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v));
    }
}

#[test]
fn rbac_is_exactly_list_pods_and_the_webhook_has_no_api_access() {
    let docs = render();
    let role: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(
        role.rules.unwrap(),
        vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".to_owned()]),
            verbs: vec!["list".to_owned()],
            ..PolicyRule::default()
        }]
    );
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRoleBinding"
        && d["kind"] != "RoleBinding"
        && d["kind"] != "Role"));
    let account: ServiceAccount = one(&docs, "ServiceAccount");
    assert_eq!(account.automount_service_account_token, Some(false));
    let deployment: Deployment = one(&docs, "Deployment");
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(pod.automount_service_account_token, Some(false));

    // The example binding for Spark namespaces points at that ClusterRole.
    let text = std::fs::read_to_string(deploy_dir().join("spark/rolebinding.yaml")).unwrap();
    let binding: RoleBinding = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    assert_eq!(binding.subjects.unwrap()[0].kind, "ServiceAccount");
}

#[test]
fn webhook_deployment_is_replicated_non_root_and_read_only() {
    let docs = render();
    let deployment: Deployment = one(&docs, "Deployment");
    for d in &docs {
        if d["kind"] != "Namespace"
            && d["kind"] != "ClusterRole"
            && d["kind"] != "MutatingWebhookConfiguration"
        {
            assert_eq!(d["metadata"]["namespace"], NAMESPACE, "{}", d["kind"]);
        }
    }
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy
            .unwrap()
            .rolling_update
            .unwrap()
            .max_unavailable,
        Some(IntOrString::Int(0))
    );
    let pdb: PodDisruptionBudget = one(&docs, "PodDisruptionBudget");
    let pdb = pdb.spec.unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    let template_labels = spec.template.metadata.unwrap().labels.unwrap();
    assert!(matches(pdb.selector.as_ref(), &template_labels));
    assert!(matches(Some(&spec.selector), &template_labels));

    let pod = spec.template.spec.unwrap();
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.containers.len(), 1);
    let c: &Container = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(IMAGE),
        "kustomize images: rewrote the placeholder"
    );
    let security = c.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let resources = c.resources.as_ref().unwrap();
    assert!(resources.requests.as_ref().unwrap().contains_key("memory"));
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(get.port, IntOrString::String("https".to_owned()));
    }
    // The injected image is the webhook's own image.
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["KSHUFFLE_WEBHOOK_IMAGE"], IMAGE);

    // Args and env go through the real binary's parser and validation: it gets as far as
    // reading the (absent here) certificate, so every flag was accepted.
    let output = Command::new(env!("CARGO_BIN_EXE_kshuffle-sidecar"))
        .args(c.args.as_ref().unwrap())
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("cannot read /etc/kshuffle/tls/tls.crt"),
        "{stderr}"
    );
}

#[test]
fn the_provided_ca_example_drops_cert_manager_and_sets_every_ca_bundle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/provided-ca");
    let docs = render_dir(&dir);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert!(
        !kinds.contains(&"Certificate") && !kinds.contains(&"Issuer"),
        "{kinds:?}"
    );
    assert_eq!(
        docs.len(),
        render().len() - 2,
        "only the two cert-manager objects go"
    );
    let config: MutatingWebhookConfiguration = one(&docs, "MutatingWebhookConfiguration");
    let annotations = config.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("cert-manager.io/inject-ca-from"));
    let hooks = config.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in hooks {
        let bundle = hook.client_config.ca_bundle.expect("caBundle set");
        assert_eq!(bundle.0, b"CA_BUNDLE", "{}", hook.name);
    }
}

//! ConfigMaps, Secrets, Services and PersistentVolumeClaims in the fake API server, through
//! the real `kube` client (and raw HTTP where the wire answer itself is the point): what
//! Spark's client creates and deletes by label, answered as the real server answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kshuffle_testkit::apiserver::{FakeApiServer, Resource};
use kshuffle_testkit::kube_client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "spark";

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn config_map(name: &str, app: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.labels = labels(&[("spark-app-selector", app), ("spark-role", "executor")]);
    cm.data = Some([("spark.properties".to_owned(), "spark.a=b\n".to_owned())].into());
    cm
}

/// Sends raw HTTP/1.1 and returns (status code, body as JSON).
async fn raw(server: &FakeApiServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn config_maps_as_spark_creates_and_deletes_them() {
    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server, NS).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();

    let a = cms
        .create(&pp, &config_map("exec-conf-a", "app-1"))
        .await
        .unwrap();
    assert_eq!(a.metadata.namespace.as_deref(), Some(NS));
    assert!(a.metadata.uid.is_some());
    assert!(a.metadata.creation_timestamp.is_some());
    let rv_a: u64 = a.metadata.resource_version.unwrap().parse().unwrap();
    cms.create(&pp, &config_map("exec-conf-b", "app-1"))
        .await
        .unwrap();
    let c = cms
        .create(&pp, &config_map("exec-conf-c", "app-2"))
        .await
        .unwrap();
    assert!(c.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv_a);

    // 409 on a second create of the same name, worded as the real server.
    let err = api_error(
        cms.create(&pp, &config_map("exec-conf-a", "app-1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "AlreadyExists");
    assert_eq!(err.message, "configmaps \"exec-conf-a\" already exists");

    let got = cms.get("exec-conf-a").await.unwrap();
    assert_eq!(
        got.data.unwrap()["spark.properties"],
        "spark.a=b\n",
        "data is kept as sent"
    );

    let app1 = cms
        .list(&ListParams::default().labels("spark-app-selector=app-1,spark-role=executor"))
        .await
        .unwrap();
    let names: Vec<_> = app1
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["exec-conf-a", "exec-conf-b"]);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=exec-conf-c"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);

    // Delete by label, as Spark does on stop, with its DeleteOptions body.
    let (code, body) = raw(
        &server,
        "DELETE",
        "/api/v1/namespaces/spark/configmaps?labelSelector=spark-app-selector%3Dapp-1%2Cspark-role%3Dexecutor",
        r#"{"apiVersion":"v1","kind":"DeleteOptions","propagationPolicy":"Background"}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "ConfigMapList");
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let left: Vec<_> = server
        .objects(Resource::ConfigMaps, NS)
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        left,
        ["exec-conf-c"],
        "the other app's ConfigMap is untouched"
    );

    let err = api_error(cms.get("exec-conf-a").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "configmaps \"exec-conf-a\" not found");

    // A delete of one object answers a Success status; a second one 404.
    let deleted = cms
        .delete("exec-conf-c", &DeleteParams::default())
        .await
        .unwrap();
    let status = deleted.right().expect("a Status, not the object");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    let err = api_error(
        cms.delete("exec-conf-c", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert!(server.objects(Resource::ConfigMaps, NS).is_empty());
}

#[tokio::test]
async fn invalid_config_maps_are_422_with_the_field() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    let pp = PostParams::default();

    let mut bad_key = config_map("ok-name", "app");
    bad_key.data = Some([("a/b".to_owned(), "x".to_owned())].into());
    let err = api_error(cms.create(&pp, &bad_key).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("ConfigMap \"ok-name\" is invalid: data[a/b]"),
        "{}",
        err.message
    );

    let err = api_error(
        cms.create(&pp, &config_map("Not_A_Name", "app"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("metadata.name: Invalid value"),
        "{}",
        err.message
    );

    let mut big = config_map("big", "app");
    big.data = Some([("k".to_owned(), "x".repeat((1 << 20) + 1))].into());
    let err = api_error(cms.create(&pp, &big).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert!(err.message.contains("Too long"), "{}", err.message);

    // generateName is honoured.
    let mut gen_cm = config_map("", "app");
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("spark-conf-".into());
    let created = cms.create(&pp, &gen_cm).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("spark-conf-"));

    // A body of another kind, or in another namespace, is a 400.
    let (code, body) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/configmaps",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, _) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/configmaps",
        r#"{"metadata":{"name":"x","namespace":"other"}}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(server.objects(Resource::ConfigMaps, NS).len(), 1);
}

#[tokio::test]
async fn secrets_merge_string_data_and_check_base64() {
    let server = FakeApiServer::start().await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    let mut s = Secret::default();
    s.metadata.name = Some("spark-auth".into());
    s.string_data = Some([("token".to_owned(), "hello".to_owned())].into());
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none(), "stringData is write-only");
    assert_eq!(created.data.unwrap()["token"].0, b"hello");
    let stored = &server.objects(Resource::Secrets, NS)[0];
    assert_eq!(stored["data"]["token"], "aGVsbG8=");

    let (code, body) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/secrets",
        r#"{"metadata":{"name":"bad"},"data":{"k":"not base64!"}}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("base64"));
}

#[tokio::test]
async fn services_get_the_defaults_of_the_real_server() {
    let server = FakeApiServer::start().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    let pp = PostParams::default();
    let port = |name: &str, p: i32| ServicePort {
        name: Some(name.into()),
        port: p,
        ..ServicePort::default()
    };
    let mut svc = Service::default();
    svc.metadata.name = Some("spark-driver-svc".into());
    svc.metadata.labels = labels(&[("spark-app-selector", "app-1")]);
    svc.spec = Some(ServiceSpec {
        ports: Some(vec![
            port("driver-rpc-port", 7078),
            port("blockmanager", 7079),
        ]),
        ..ServiceSpec::default()
    });
    let created = svcs.create(&pp, &svc).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.cluster_ip.unwrap().starts_with("10.96."));
    let ports = spec.ports.unwrap();
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(ports[0].target_port, Some(IntOrString::Int(7078)));

    // A headless service may have no ports; other services must.
    let mut headless = Service::default();
    headless.metadata.name = Some("headless".into());
    headless.spec = Some(ServiceSpec {
        cluster_ip: Some("None".into()),
        ..ServiceSpec::default()
    });
    svcs.create(&pp, &headless).await.unwrap();
    let mut portless = headless.clone();
    portless.metadata.name = Some("portless".into());
    portless.spec = Some(ServiceSpec::default());
    let err = api_error(svcs.create(&pp, &portless).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("spec.ports: Required value"),
        "{}",
        err.message
    );

    // Two ports need names; a name must be a DNS-1035 label.
    let mut unnamed = svc.clone();
    unnamed.metadata.name = Some("1-starts-with-a-digit".into());
    unnamed.spec = Some(ServiceSpec {
        ports: Some(vec![port("", 1), port("", 2)]),
        ..ServiceSpec::default()
    });
    let err = api_error(svcs.create(&pp, &unnamed).await.unwrap_err());
    assert_eq!(err.code, 422);
    let details = err.details.unwrap();
    let fields: Vec<_> = details.causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        ["metadata.name", "spec.ports[0].name", "spec.ports[1].name"]
    );

    // Deleted by label as Spark does on stop.
    svcs.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels("spark-app-selector=app-1"),
    )
    .await
    .unwrap();
    let left: Vec<_> = server
        .objects(Resource::Services, NS)
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["headless"]);
}

#[tokio::test]
async fn persistent_volume_claims_are_validated_and_pending() {
    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server, NS).unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": "spark-local-dir", "labels": { "spark-app-selector": "app-1" } },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "10Gi" } } },
    }))
    .unwrap();
    let created = pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    let all: Api<PersistentVolumeClaim> = Api::all(client);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    let mut bad = pvc.clone();
    bad.metadata.name = Some("no-modes".into());
    bad.spec.as_mut().unwrap().access_modes = None;
    let err = api_error(pvcs.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(err.code, 422);
    assert!(err.message.contains("spec.accessModes"), "{}", err.message);
}

#[tokio::test]
async fn what_the_fake_does_not_serve_is_answered_as_the_real_server_would() {
    let server = FakeApiServer::start().await.unwrap();
    // Unknown resources and API groups: 404 with a Status.
    for path in [
        "/api/v1/namespaces/spark/widgets",
        "/api/v1/namespaces/spark/widgets/x",
        "/apis/apps/v1/namespaces/spark/deployments",
    ] {
        let (code, body) = raw(&server, "GET", path, "").await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (404, Some("NotFound")),
            "{path}"
        );
    }
    // Verbs not implemented here: 405 MethodNotAllowed.
    let (code, body) = raw(
        &server,
        "PUT",
        "/api/v1/namespaces/spark/configmaps/x",
        r#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    // Watches of these resources and dry runs: a 400 that says so.
    let (code, body) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/spark/configmaps?watch=true",
        "",
    )
    .await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("not supported"));
    let (code, _) = raw(
        &server,
        "POST",
        "/api/v1/namespaces/spark/secrets?dryRun=All",
        r#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert!(server.objects(Resource::Secrets, NS).is_empty());
    // Bad selectors: 400, as for pods.
    let (code, _) = raw(
        &server,
        "GET",
        "/api/v1/namespaces/spark/services?fieldSelector=spec.type%3DClusterIP",
        "",
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn one_resource_version_counter_for_every_kind() {
    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server, NS).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let before: u64 = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let cm = cms
        .create(&PostParams::default(), &config_map("c", "app"))
        .await
        .unwrap();
    let cm_rv: u64 = cm.metadata.resource_version.unwrap().parse().unwrap();
    assert!(cm_rv > before);
    assert_eq!(server.resource_version(), cm_rv);
}

#[tokio::test]
async fn discovery_lists_what_is_served_and_non_json_bodies_are_415() {
    let server = FakeApiServer::start().await.unwrap();
    let (code, body) = raw(&server, "GET", "/api", "").await;
    assert_eq!((code, body["versions"].clone()), (200, json!(["v1"])));
    let (code, body) = raw(&server, "GET", "/apis", "").await;
    assert_eq!(code, 200);
    let groups: Vec<&str> = body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["preferredVersion"]["groupVersion"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "apps/v1",
            "admissionregistration.k8s.io/v1",
            "networking.k8s.io/v1"
        ]
    );
    let (code, body) = raw(&server, "GET", "/apis/networking.k8s.io/v1", "").await;
    assert_eq!(code, 200);
    assert_eq!(body["resources"][0]["kind"], "NetworkPolicy");
    let (code, body) = raw(&server, "GET", "/api/v1", "").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pods",
            "configmaps",
            "secrets",
            "services",
            "persistentvolumeclaims",
            "namespaces"
        ]
    );
    let cm = &body["resources"][1];
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["shortNames"], json!(["cm"]));
    assert!(!cm["verbs"].as_array().unwrap().contains(&json!("watch")));

    // kubectl's default for built-in kinds is protobuf, which the fake does not decode.
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = "POST /api/v1/namespaces/spark/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.kubernetes.protobuf\r\nContent-Length: 2\r\nConnection: close\r\n\r\nk8";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    assert!(out.contains("\"reason\":\"UnsupportedMediaType\""), "{out}");
    assert!(server.objects(Resource::ConfigMaps, NS).is_empty());
}

#[tokio::test]
async fn server_side_apply_creates_or_replaces_as_sparks_cluster_mode_client_sends_it() {
    use kube::api::{Patch, PatchParams};
    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server, NS).unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    // As Spark 4's KubernetesClientApplication: forceConflicts().serverSideApply().
    let ssa = PatchParams::apply("fabric8").force();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "app-driver-svc", "labels": { "spark-app-selector": "app-1" } },
        "spec": {
            "clusterIP": "None",
            "selector": { "spark-app-selector": "app-1", "spark-role": "driver" },
            "ports": [{ "name": "driver-rpc-port", "port": 7078, "targetPort": 7078 }],
        },
    }))
    .unwrap();
    let created = svcs
        .patch("app-driver-svc", &ssa, &Patch::Apply(&svc))
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(server.objects(Resource::Services, NS).len(), 1);

    // Applied again (Spark adds the driver pod as owner): replaced, same uid, new version.
    let mut again = svc.clone();
    again.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "name": "drv", "uid": "u-1", "controller": true,
        }))
        .unwrap(),
    ]);
    let applied = svcs
        .patch("app-driver-svc", &ssa, &Patch::Apply(&again))
        .await
        .unwrap();
    assert_eq!(applied.metadata.uid, created.metadata.uid);
    assert_eq!(
        applied.metadata.creation_timestamp,
        created.metadata.creation_timestamp
    );
    let rv = |s: &Service| -> u64 {
        s.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(rv(&applied) > rv(&created));
    assert_eq!(applied.metadata.owner_references.unwrap()[0].name, "drv");
    assert_eq!(
        svcs.get("app-driver-svc").await.unwrap().metadata.uid,
        created.metadata.uid
    );

    // A ConfigMap created by POST and then applied: its data is the applied data.
    cms.create(&PostParams::default(), &config_map("conf", "app-1"))
        .await
        .unwrap();
    let mut cm = config_map("conf", "app-1");
    cm.data = Some([("spark.properties".to_owned(), "spark.x=y\n".to_owned())].into());
    cms.patch("conf", &ssa, &Patch::Apply(&cm)).await.unwrap();
    let got = cms.get("conf").await.unwrap().data.unwrap();
    assert_eq!(got["spark.properties"], "spark.x=y\n");

    // Invalid objects are refused as on create, and the stored one stays.
    let mut bad = config_map("conf", "app-1");
    bad.data = Some([("a/b".to_owned(), "x".to_owned())].into());
    let err = api_error(
        cms.patch("conf", &ssa, &Patch::Apply(&bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(
        cms.get("conf").await.unwrap().data.unwrap()["spark.properties"],
        "spark.x=y\n"
    );
    // A name other than the URL's, another patch type, no field manager: refused.
    let err = api_error(
        cms.patch("other", &ssa, &Patch::Apply(&cm))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    let err = api_error(
        cms.patch(
            "conf",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 415);
    let (code, _) = raw(
        &server,
        "PATCH",
        "/api/v1/namespaces/spark/configmaps/conf",
        r#"{"metadata":{"name":"conf"}}"#,
    )
    .await;
    assert_eq!(code, 415);

    // Spark 4.3 applies a NetworkPolicy (networking.k8s.io/v1) per application: stored and
    // served (never enforced), listed and deleted by label like the rest.
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let nps: Api<NetworkPolicy> = Api::namespaced(kube_client(&server, NS).unwrap(), NS);
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "app-policy", "labels": { "spark-app-selector": "app-1" } },
        "spec": {
            "podSelector": { "matchLabels": { "spark-role": "executor", "spark-app-selector": "app-1" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "spark-app-selector": "app-1" } } }] }],
        },
    }))
    .unwrap();
    let created = nps
        .patch("app-policy", &ssa, &Patch::Apply(&np))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        nps.get("app-policy").await.unwrap().metadata.uid,
        created.metadata.uid
    );
    let listed = nps
        .list(&ListParams::default().labels("spark-app-selector=app-1"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let mut no_selector = np.clone();
    no_selector.spec = Some(Default::default());
    let mut raw_np = serde_json::to_value(&no_selector).unwrap();
    raw_np["spec"]
        .as_object_mut()
        .unwrap()
        .remove("podSelector");
    let err = api_error(
        nps.patch("app-policy", &ssa, &Patch::Apply(&raw_np))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    nps.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("spark-app-selector=app-1"),
    )
    .await
    .unwrap();
    assert!(server.objects(Resource::NetworkPolicies, NS).is_empty());
}

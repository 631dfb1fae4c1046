use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, PodSpec, SecretKeySelector};

use super::*;

fn pod(app: Option<&str>, env: Vec<EnvVar>) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some("exec-1".into());
    pod.metadata.labels = app.map(|a| {
        BTreeMap::from([
            ("spark-role".to_owned(), "executor".to_owned()),
            (APP_ID_LABEL.to_owned(), a.to_owned()),
        ])
    });
    pod.spec = Some(PodSpec {
        containers: vec![
            Container {
                name: "other".into(),
                env: Some(vec![EnvVar {
                    name: "X".into(),
                    value: Some("y".into()),
                    ..EnvVar::default()
                }]),
                ..Container::default()
            },
            Container {
                name: "spark-kubernetes-executor".into(),
                env: Some(env),
                ..Container::default()
            },
        ],
        ..PodSpec::default()
    });
    pod
}

fn value(v: &str) -> EnvVar {
    EnvVar {
        name: ENV_AUTH_SECRET.into(),
        value: Some(v.into()),
        ..EnvVar::default()
    }
}

#[test]
fn the_secret_is_read_from_the_executor_containers_env() {
    assert_eq!(
        pod_secret(&pod(Some("spark-1"), vec![value("s3cret")])),
        PodSecret::Found {
            app: "spark-1".into(),
            secret: Secret::from("s3cret")
        }
    );
    let from_ref = EnvVar {
        name: ENV_AUTH_SECRET.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: "s".into(),
                key: "k".into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    assert_eq!(
        pod_secret(&pod(Some("spark-1"), vec![from_ref])),
        PodSecret::ValueFrom {
            app: "spark-1".into()
        }
    );
    // No label, an unusable label, no env, an empty value: nothing learned.
    assert_eq!(pod_secret(&pod(None, vec![value("s")])), PodSecret::None);
    assert_eq!(
        pod_secret(&pod(Some("a b"), vec![value("s")])),
        PodSecret::None
    );
    assert_eq!(pod_secret(&pod(Some("spark-1"), vec![])), PodSecret::None);
    assert_eq!(
        pod_secret(&pod(Some("spark-1"), vec![value("")])),
        PodSecret::None
    );
    assert_eq!(pod_secret(&Pod::default()), PodSecret::None);
}

#[test]
fn secrets_live_while_the_app_has_a_pod_or_is_registered_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let registered = Arc::new(AtomicBool::new(false));
    let secrets = PodSecrets::open(dir.path()).unwrap();
    let r = Arc::clone(&registered);
    secrets.set_registered(Box::new(move |app| {
        app == "spark-1" && r.load(Ordering::SeqCst)
    }));
    let (learned, persisted) = secrets.learn("spark-1", Secret::from("one"));
    assert_eq!(learned, Learned::New);
    persisted.unwrap();
    assert_eq!(
        secrets.learn("spark-1", Secret::from("one")).0,
        Learned::Same
    );
    // Another secret for a known app never replaces it.
    assert_eq!(
        secrets.learn("spark-1", Secret::from("evil")).0,
        Learned::Conflict
    );
    assert_eq!(secrets.secret("spark-1").unwrap().as_bytes(), b"one");
    assert!(secrets.secret("spark-2").is_none());

    // Mode 0600, and a restart reads it back.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join(SECRETS_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let reopened = PodSecrets::open(dir.path()).unwrap();
    assert_eq!(reopened.secret("spark-1").unwrap().as_bytes(), b"one");

    // Before the watch listed the node, nothing is pruned.
    assert!(secrets.prune().0.is_empty());
    secrets.set_live(HashSet::from(["spark-1".to_owned()]));
    assert!(secrets.prune().0.is_empty());
    // The pod is gone but the app is registered: kept.
    secrets.set_live(HashSet::new());
    registered.store(true, Ordering::SeqCst);
    assert_eq!(secrets.secret("spark-1").unwrap().as_bytes(), b"one");
    assert!(secrets.prune().0.is_empty());
    // Removed from the daemon: refused at once, forgotten by the next prune, on disk too.
    registered.store(false, Ordering::SeqCst);
    assert!(secrets.secret("spark-1").is_none());
    assert_eq!(secrets.prune().0, vec!["spark-1".to_owned()]);
    assert!(secrets.apps().is_empty());
    assert!(PodSecrets::open(dir.path()).unwrap().apps().is_empty());
}

#[test]
fn a_malformed_secrets_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["no-space\n", "app zz\n", "app abc\n", "a b c\n"] {
        std::fs::write(dir.path().join(SECRETS_FILE), bad).unwrap();
        let err = PodSecrets::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SECRETS_FILE), "{bad:?}: {err}");
    }
    std::fs::write(dir.path().join(SECRETS_FILE), "spark-1 6f6e65\n").unwrap();
    let s = PodSecrets::open(dir.path()).unwrap();
    assert_eq!(s.secret("spark-1").unwrap().as_bytes(), b"one");
}

//! What the `fake-apiserver` binary needs to run a simulated cluster for a developer (issue 10,
//! "one command"; `scripts/sim-cluster.sh`): applying rendered manifests to the fake API
//! server and reading a `spark-submit` flags file (the format of
//! `daemonset/deploy/spark/spark-submit.flags`) for the command it prints.
//!
//! Applying is a plain create through the real `kube` client, one object at a time in file
//! order (as `kubectl create -f` does), each kind resolved through the fake's discovery
//! documents. Kinds it does not serve (ServiceAccounts, RBAC, PriorityClasses, Deployments, …)
//! are skipped and reported, not failed: they have no effect on a cluster without
//! authorization or preemption.

use std::path::{Path, PathBuf};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use kube::Api;
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::Scope;
use kube::error::DiscoveryError;
use serde_json::Value;

/// Why manifests could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML (or JSON).
    #[error("{path}: not YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A document is not a Kubernetes object (no `apiVersion`, `kind` or `metadata.name`).
    #[error(
        "{path}: document {index} is not a Kubernetes object (apiVersion, kind, metadata.name)"
    )]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The document's index in the file, from 0.
        index: usize,
    },
    /// The API server refused an object.
    #[error("{kind} {name}: {source}")]
    Api {
        /// The object's kind.
        kind: String,
        /// Its `namespace/name` or name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// A Kubernetes object of a manifest file.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// The whole object.
    pub object: Value,
}

impl Manifest {
    /// `kind namespace/name`, or `kind name` without a namespace.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// What [`apply`] did with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Created (namespaced kinds without a namespace go to `default`).
    Created,
    /// Not sent: the fake API server does not serve this kind.
    Skipped,
}

/// Reads every object of a YAML (or JSON) file of one or more documents, in file order; empty
/// documents (a trailing `---`) are left out.
///
/// # Errors
/// When the file cannot be read, is not YAML, or holds a document that is not an object with
/// `apiVersion`, `kind` and `metadata.name`.
pub fn read_manifests(path: &Path) -> Result<Vec<Manifest>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| Error::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (index, object) in docs.into_iter().enumerate() {
        if object.is_null() {
            continue;
        }
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let meta = object.get("metadata").cloned().unwrap_or(Value::Null);
        let (Some(api_version), Some(kind), Some(name)) = (
            field(&object, "apiVersion"),
            field(&object, "kind"),
            field(&meta, "name"),
        ) else {
            return Err(Error::NotAnObject {
                path: path.to_owned(),
                index,
            });
        };
        out.push(Manifest {
            api_version,
            kind,
            name,
            namespace: field(&meta, "namespace"),
            object,
        });
    }
    Ok(out)
}

impl Manifest {
    /// Sets `clientConfig.caBundle` of each webhook of a MutatingWebhookConfiguration that
    /// has none to (the base64 of) `ca_pem`, as cert-manager's CA injector does for the
    /// configuration of `sidecar/deploy`. Other kinds are left alone; returns whether anything
    /// changed.
    pub fn inject_ca_bundle(&mut self, ca_pem: &[u8]) -> bool {
        if self.kind != "MutatingWebhookConfiguration" {
            return false;
        }
        let encoded = Value::from(BASE64_STANDARD.encode(ca_pem));
        let mut changed = false;
        let hooks = self
            .object
            .get_mut("webhooks")
            .and_then(Value::as_array_mut);
        for hook in hooks.into_iter().flatten() {
            let Some(config) = hook.get_mut("clientConfig").and_then(Value::as_object_mut) else {
                continue;
            };
            if !config.contains_key("caBundle") {
                config.insert("caBundle".to_owned(), encoded.clone());
                changed = true;
            }
        }
        changed
    }
}

/// Creates `manifest` in the fake API server through `client`, or skips it when the server
/// does not serve its kind: the kind, its plural and scope are looked up in the server's
/// discovery documents (`/api/v1`, `/apis/<group>/<version>`), as `kubectl` does, so this
/// follows whatever the fake serves.
///
/// # Errors
/// When the server refuses the object (already exists, invalid, …) or cannot be reached.
pub async fn apply(client: &kube::Client, manifest: &Manifest) -> Result<Applied, Error> {
    let api_error = |source: kube::Error| Error::Api {
        kind: manifest.kind.clone(),
        name: manifest.describe(),
        source: Box::new(source),
    };
    let (group, version) = manifest
        .api_version
        .split_once('/')
        .unwrap_or(("", manifest.api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, &manifest.kind);
    let (resource, caps) = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(found) => found,
        // The group/version is not served, or does not list the kind.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Applied::Skipped),
        Err(kube::Error::Discovery(DiscoveryError::MissingKind(_))) => {
            return Ok(Applied::Skipped);
        }
        Err(e) => return Err(api_error(e)),
    };
    let object: DynamicObject = serde_json::from_value(manifest.object.clone())
        .map_err(|e| api_error(kube::Error::SerdeError(e)))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = manifest.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.create(&PostParams::default(), &object)
        .await
        .map_err(api_error)?;
    Ok(Applied::Created)
}

/// The `--conf` values of a `spark-submit` flags file (one `--conf key=value` a line, `#`
/// comments), with the value of `spark.kubernetes.executor.podTemplateFile` made absolute
/// against the file's directory (the file says: a path where spark-submit runs).
///
/// # Errors
/// When the file cannot be read.
pub fn read_submit_flags(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(conf) = line.strip_prefix("--conf ") else {
            continue;
        };
        let conf = conf.trim();
        out.push(match conf.split_once('=') {
            Some((k, v)) if k == "spark.kubernetes.executor.podTemplateFile" => {
                format!("{k}={}", dir.join(v).display())
            }
            _ => conf.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn manifests_are_read_in_order_and_bad_documents_are_named() {
        let dir = std::env::temp_dir().join(format!("kshuffle-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: apps/v1\n\
             kind: DaemonSet\nmetadata:\n  name: d\n  namespace: a\n---\n",
        )
        .unwrap();
        let got = read_manifests(&good).unwrap();
        let names: Vec<String> = got.iter().map(Manifest::describe).collect();
        assert_eq!(names, ["Namespace a", "DaemonSet a/d"]);
        let hooks = dir.join("hooks.yaml");
        std::fs::write(
            &hooks,
            "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\n\
             metadata:\n  name: m\nwebhooks:\n- name: a\n  clientConfig:\n    url: https://x\n\
             - name: b\n  clientConfig:\n    caBundle: b2xk\n",
        )
        .unwrap();
        let mut hooks = read_manifests(&hooks).unwrap();
        assert!(hooks[0].inject_ca_bundle(b"pem"));
        let bundles: Vec<&Value> = hooks[0].object["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| &h["clientConfig"]["caBundle"])
            .collect();
        assert_eq!(bundles, ["cGVt", "b2xk"]);
        assert!(!hooks[0].inject_ca_bundle(b"pem"));
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "apiVersion: v1\nkind: Namespace\n---\nkind: [\n").unwrap();
        let err = read_manifests(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        std::fs::write(&bad, "apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap();
        let err = read_manifests(&bad).unwrap_err().to_string();
        assert!(
            err.contains("document 0 is not a Kubernetes object"),
            "{err}"
        );
        let flags = dir.join("x.flags");
        std::fs::write(
            &flags,
            "# c\n--conf a=b\n--conf spark.kubernetes.executor.podTemplateFile=t.yaml\n",
        )
        .unwrap();
        let got = read_submit_flags(&flags).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            got,
            [
                "a=b".to_owned(),
                format!(
                    "spark.kubernetes.executor.podTemplateFile={}",
                    dir.join("t.yaml").display()
                )
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

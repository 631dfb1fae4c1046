//! `kubectl kustomize DIR` for tests of the committed deployment manifests: kubectl's built-in
//! kustomize works offline (no cluster); `KUBECTL` overrides the kubectl it runs. The output
//! is split into YAML documents as JSON values, empty documents dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Why the manifests did not render.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kubectl could not be run.
    #[error(
        "cannot run {kubectl:?} ({source}); install kubectl (its kustomize works offline, no \
         cluster needed) or point KUBECTL at it"
    )]
    Kubectl {
        /// The program tried.
        kubectl: OsString,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// kustomize refused the directory.
    #[error("`kubectl kustomize {}` failed ({status}):\n{stderr}", dir.display())]
    Failed {
        /// The directory rendered.
        dir: PathBuf,
        /// kubectl's exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The output is not UTF-8 YAML.
    #[error("`kubectl kustomize {}` output is not YAML: {message}", dir.display())]
    Yaml {
        /// The directory rendered.
        dir: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// The kubectl to run: `$KUBECTL`, else `kubectl` on the `PATH`.
pub fn kubectl() -> OsString {
    std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into())
}

/// Renders `dir` with `kubectl kustomize` and returns its documents.
///
/// # Errors
/// When kubectl cannot run, kustomize fails, or the output does not parse.
pub fn render(dir: &Path) -> Result<Vec<Value>, Error> {
    let kubectl = kubectl();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|source| Error::Kubectl {
            kubectl: kubectl.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            dir: dir.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let yaml = |message: String| Error::Yaml {
        dir: dir.to_owned(),
        message,
    };
    let text = String::from_utf8(out.stdout).map_err(|e| yaml(e.to_string()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| yaml(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The one document of `kind` in `docs`.
///
/// # Errors
/// A message naming the kind when there is none or more than one.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value, String> {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    match (found.next(), found.next()) {
        (Some(doc), None) => Ok(doc),
        (None, _) => Err(format!("no {kind} in the rendered manifests")),
        (Some(_), Some(_)) => Err(format!("more than one {kind} in the rendered manifests")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn renders_a_kustomization_into_its_documents() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "kustomization.yaml",
            "resources: [objects.yaml]\nnamespace: spark\n",
        );
        write(
            dir.path(),
            "objects.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n",
        );
        let docs = render(dir.path()).unwrap();
        assert_eq!(docs.len(), 2);
        let map = one(&docs, "ConfigMap").unwrap();
        assert_eq!(map["metadata"]["namespace"], "spark", "kustomize ran");
        assert!(one(&docs, "Secret").unwrap_err().contains("no Secret"));
    }

    #[test]
    fn a_directory_kustomize_refuses_is_an_error_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "kustomization.yaml",
            "resources: [missing.yaml]\n",
        );
        let err = render(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Failed { .. }), "{err}");
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }
}

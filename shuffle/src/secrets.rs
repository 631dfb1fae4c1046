//! Where `spark.authenticate` secrets come from: one shared secret file, or a directory with
//! one file per application named after its app id (the shape of a mounted Kubernetes
//! Secret whose keys are app ids), or both (the directory first).
//!
//! In [`SecretFormat::Text`] a file holds the secret string exactly as Spark uses it
//! (`spark.authenticate.secret`); one trailing newline is ignored. In
//! [`SecretFormat::SparkSecretFile`] a file is what Spark on Kubernetes reads through
//! `spark.authenticate.secret.{driver,executor}.file`: the secret is the base64 of its raw
//! bytes. Directory files are read at each authentication, so secrets added to a mounted
//! Secret are picked up without a restart.

use std::path::{Path, PathBuf};

use crate::auth::{Secret, SecretSource};

/// Longest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// How a secret file's bytes become the secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecretFormat {
    /// The file is the secret string (one trailing newline ignored).
    #[default]
    Text,
    /// The secret is the base64 of the file's raw bytes, as Spark derives it from
    /// `spark.authenticate.secret.*.file`.
    SparkSecretFile,
}

/// Secrets from files.
#[derive(Debug, Default)]
pub struct FileSecrets {
    shared: Option<Secret>,
    dir: Option<PathBuf>,
    format: SecretFormat,
}

impl FileSecrets {
    /// Reads the shared secret file (if any) now; remembers the per-app directory.
    ///
    /// # Errors
    /// When the shared file cannot be read or is empty, or the directory is not one.
    pub fn new(
        shared_file: Option<&Path>,
        dir: Option<&Path>,
        format: SecretFormat,
    ) -> std::io::Result<Self> {
        let shared = match shared_file {
            Some(path) => Some(read_secret(path, format)?.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("secret file {} is empty", path.display()),
                )
            })?),
            None => None,
        };
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("secrets dir {} is not a directory", dir.display()),
            ));
        }
        Ok(Self {
            shared,
            dir: dir.map(Path::to_path_buf),
            format,
        })
    }
}

/// Reads one secret file; `Ok(None)` for an empty one.
fn read_secret(path: &Path, format: SecretFormat) -> std::io::Result<Option<Secret>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_BYTES)
        .read_to_end(&mut bytes)?;
    if format == SecretFormat::SparkSecretFile {
        return Ok((!bytes.is_empty()).then(|| Secret::from_secret_file(&bytes)));
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok((!bytes.is_empty()).then(|| Secret::new(bytes)))
}

/// Whether `app_id` can name a file in the secrets dir (no path, no hidden or special name).
fn file_name_ok(app_id: &str) -> bool {
    !app_id.is_empty()
        && app_id.len() <= 255
        && !app_id.starts_with('.')
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl SecretSource for FileSecrets {
    fn secret(&self, app_id: &str) -> Option<Secret> {
        if let Some(dir) = &self.dir
            && file_name_ok(app_id)
            && let Ok(Some(secret)) = read_secret(&dir.join(app_id), self.format)
        {
            return Some(secret);
        }
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_per_app_files() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::write(&shared, "s3cret\n").unwrap();
        let dir = tmp.path().join("apps");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("app-1"), "one").unwrap();
        std::fs::write(tmp.path().join("outside"), "nope").unwrap();

        let both = FileSecrets::new(Some(&shared), Some(&dir), SecretFormat::Text).unwrap();
        assert_eq!(both.secret("app-1").unwrap().as_bytes(), b"one");
        assert_eq!(both.secret("app-2").unwrap().as_bytes(), b"s3cret");
        // Added later: picked up without a restart.
        std::fs::write(dir.join("app-2"), "two\r\n").unwrap();
        assert_eq!(both.secret("app-2").unwrap().as_bytes(), b"two");

        let dir_only = FileSecrets::new(None, Some(&dir), SecretFormat::Text).unwrap();
        assert!(dir_only.secret("app-3").is_none());
        for hostile in ["../outside", "..", ".hidden", "a/b", "", "app\0"] {
            assert!(dir_only.secret(hostile).is_none(), "{hostile:?}");
        }

        std::fs::write(&shared, "\n").unwrap();
        assert!(
            FileSecrets::new(Some(&shared), None, SecretFormat::Text).is_err(),
            "empty secret accepted"
        );
        assert!(
            FileSecrets::new(None, Some(&shared), SecretFormat::Text).is_err(),
            "file accepted as dir"
        );
    }

    #[test]
    fn spark_secret_files_are_base64_of_their_raw_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("secret");
        // Raw bytes, trailing newline included: Spark encodes the file as it is.
        std::fs::write(&file, b"hello\n").unwrap();
        let s = FileSecrets::new(Some(&file), None, SecretFormat::SparkSecretFile).unwrap();
        assert_eq!(s.secret("any").unwrap().as_bytes(), b"aGVsbG8K");
    }
}

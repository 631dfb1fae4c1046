//! Per-application secrets: the [`SecretSource`] the connection layer consults, a [`Secret`]
//! that is wiped from memory when dropped, and [`StaticSecrets`] (one shared secret and/or a
//! fixed map).

use std::collections::HashMap;
use std::fmt;

use zeroize::Zeroizing;

/// Where per-application secrets come from. Called once per authentication attempt, on the
/// connection's task: implementations must be quick (an in-memory lookup).
pub trait SecretSource: Send + Sync {
    /// The secret of `app_id`, or `None` when the application is unknown.
    fn secret(&self, app_id: &str) -> Option<Secret>;
}

/// A shared secret: the UTF-8 bytes of Spark's `spark.authenticate.secret` string (on
/// Kubernetes with secret files, the base64 text of the file, §6.6). Zeroed on drop; `Debug`
/// does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

// === impl Secret ===

impl Secret {
    /// A secret from its bytes (the UTF-8 bytes of the secret string).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// The secret Spark derives from a secret file
    /// (`spark.authenticate.secret.{driver,executor}.file`, Kubernetes only): the standard
    /// base64 of the file's raw bytes, without line breaks (`SecurityManager.secretKeyFromFile`).
    pub fn from_secret_file(contents: &[u8]) -> Self {
        Secret::new(super::digest::base64(contents, false))
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Secrets fixed at start-up: a per-application map, with an optional shared secret for every
/// application not in the map (the Java standalone service's model is the shared secret alone).
#[derive(Debug, Clone, Default)]
pub struct StaticSecrets {
    shared: Option<Secret>,
    per_app: HashMap<String, Secret>,
}

// === impl StaticSecrets ===

impl StaticSecrets {
    /// Every application authenticates with `secret`.
    pub fn shared(secret: Secret) -> Self {
        StaticSecrets {
            shared: Some(secret),
            per_app: HashMap::new(),
        }
    }

    /// Only the applications in `per_app` can authenticate, each with its own secret.
    pub fn per_app(per_app: HashMap<String, Secret>) -> Self {
        StaticSecrets {
            shared: None,
            per_app,
        }
    }

    /// Adds (or replaces) the secret of `app_id`; it takes precedence over the shared one.
    pub fn with_app(mut self, app_id: impl Into<String>, secret: Secret) -> Self {
        self.per_app.insert(app_id.into(), secret);
        self
    }
}

impl SecretSource for StaticSecrets {
    fn secret(&self, app_id: &str) -> Option<Secret> {
        self.per_app.get(app_id).or(self.shared.as_ref()).cloned()
    }
}

/// Two sources consulted in order: `first`'s secret if it knows the application, else
/// `second`'s (e.g. secrets learned from executor pods, then secret files).
pub struct Layered {
    first: std::sync::Arc<dyn SecretSource>,
    second: std::sync::Arc<dyn SecretSource>,
}

// === impl Layered ===

impl Layered {
    /// `first`, falling back to `second`.
    pub fn new(
        first: std::sync::Arc<dyn SecretSource>,
        second: std::sync::Arc<dyn SecretSource>,
    ) -> Self {
        Layered { first, second }
    }
}

impl fmt::Debug for Layered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Layered(..)")
    }
}

impl SecretSource for Layered {
    fn secret(&self, app_id: &str) -> Option<Secret> {
        self.first
            .secret(app_id)
            .or_else(|| self.second.secret(app_id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn layered_asks_the_first_source_then_the_second() {
        let first = StaticSecrets::per_app(HashMap::new()).with_app("a", Secret::from("from-pod"));
        let second = StaticSecrets::shared(Secret::from("shared")).with_app("b", Secret::from("b"));
        let both = Layered::new(Arc::new(first), Arc::new(second));
        assert_eq!(both.secret("a").unwrap().as_bytes(), b"from-pod");
        assert_eq!(both.secret("b").unwrap().as_bytes(), b"b");
        assert_eq!(both.secret("c").unwrap().as_bytes(), b"shared");
        let none = Layered::new(
            Arc::new(StaticSecrets::default()),
            Arc::new(StaticSecrets::default()),
        );
        assert!(none.secret("a").is_none());
    }
}

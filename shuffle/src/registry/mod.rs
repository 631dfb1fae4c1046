//! The registry: which executors of which applications are registered, with the local
//! directories their shuffle files live in.
//!
//! It is a small trait with two implementations: [`MemoryRegistry`] keeps everything in memory
//! (lost on restart; tests), [`JournalRegistry`] makes every change durable in an `fsync`ed
//! journal under the state dir before it is acknowledged (production). Entries are
//! validated before they get here (the `store` layer confines local dirs to the allowed
//! roots); the registry only records them. No network types appear here.

mod journal;
mod memory;

use std::borrow::Borrow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use journal::{JournalRegistry, Pending, Recovery};
pub use memory::MemoryRegistry;

/// A Spark application id as sent by executors (`spark-application-…`, `app-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub String);

/// An executor id within an application (`"1"`, `"2"`, …; `"driver"` for the driver).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecId(pub String);

macro_rules! string_id {
    ($t:ty) => {
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}
string_id!(AppId);
string_id!(ExecId);

/// One registered executor: what `RegisterExecutor` said, plus the local dirs as the daemon
/// resolved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executor {
    /// The application.
    pub app_id: AppId,
    /// The executor.
    pub exec_id: ExecId,
    /// The local dirs exactly as registered (returned verbatim by `GetLocalDirsForExecutors`).
    pub local_dirs: Vec<String>,
    /// The same dirs, canonicalized (no symlinks, no `..`), each inside an allowed root.
    /// Every file access for this executor is computed from these.
    pub resolved_dirs: Vec<PathBuf>,
    /// `spark.diskStore.subDirectories` of the executor (> 0).
    pub sub_dirs_per_local_dir: u32,
    /// The executor's shuffle manager class name (recorded, not interpreted).
    pub shuffle_manager: String,
}

/// Where registrations are kept.
///
/// Implementations are shared between connection tasks and must be cheap to read: `get` is
/// on the path of every chunk served.
pub trait Registry: Send + Sync + 'static {
    /// Records an executor, replacing any earlier registration of the same (app, executor).
    ///
    /// # Errors
    /// When the registration cannot be recorded (a durable store failing to write).
    fn insert(&self, executor: Arc<Executor>) -> Result<(), Error>;

    /// Writes a registration like [`Registry::insert`] without waiting for it to be
    /// durable: it is served, and may be acknowledged, once the returned [`Pending`]
    /// resolves, which an async caller awaits without holding a thread. By default the
    /// registration is made whole at once (for stores where it costs no wait).
    ///
    /// # Errors
    /// When the registration cannot be written.
    fn begin_insert(&self, executor: Arc<Executor>) -> Result<Pending, Error> {
        self.insert(executor)?;
        Ok(Pending::done())
    }

    /// The registration of `exec` in `app`, if any.
    fn get(&self, app: &str, exec: &str) -> Option<Arc<Executor>>;

    /// Every registered executor of `app` (empty when the app is unknown).
    fn executors_of(&self, app: &str) -> Vec<Arc<Executor>>;

    /// Drops every registration of `app`, returning them (empty when the app is unknown).
    ///
    /// # Errors
    /// When the removal cannot be recorded; nothing is removed then.
    fn remove_app(&self, app: &str) -> Result<Vec<Arc<Executor>>, Error>;

    /// Every app with at least one registered executor.
    fn apps(&self) -> Vec<AppId>;

    /// Every registered executor.
    fn all(&self) -> Vec<Arc<Executor>>;

    /// Number of registered (app, executor) pairs.
    fn len(&self) -> usize;

    /// Makes everything recorded so far durable (a no-op where every change already is).
    ///
    /// # Errors
    /// When the backing store cannot sync.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Whether nothing is registered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failure to record a registration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing store could not write the record.
    #[error("registry store failed: {0}")]
    Store(#[source] std::io::Error),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Store(_) => "registry_store",
        }
    }
}

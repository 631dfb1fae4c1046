//! The driver-pod watch: removes an application's registrations and files once its Spark
//! driver pod has ended, for certain.
//!
//! - [`tracker`]: the pure decisions (watch events in, [`AppEnded`] out);
//! - [`watch`]: the thin I/O around it (`kube::runtime::watcher`, backoff, delayed removal
//!   through the daemon's removal path, metrics).
//!
//! What it watches: pods labelled `spark-role=driver` (the label Spark's Kubernetes backend
//! puts on drivers), in one namespace or all; the application id is their
//! `spark-app-selector` label, which Spark sets to `spark.app.id`, the id executors register
//! with. No field selector narrows it: every phase change matters, and a driver may run on
//! any node while its executors' files are on this one.
//!
//! What it never does: remove an application because its driver pod is simply not found.
//! Client-mode drivers have no pod, and a restarted daemon holds applications whose drivers
//! it never saw; those are left to the daemon's idle/orphan sweep (`--app-idle-timeout`).
//! Only a driver pod this watch saw end (phase `Succeeded`/`Failed`), saw deleted, or saw
//! before and then missed in a complete relist, ends an application. Applications that end
//! but were never registered with this daemon are ignored (logged at debug level).
//!
//! Tests run it against `kshuffle_testkit::FakeApiServer` (a fake API server speaking real
//! HTTP to the real `kube` client); no Kubernetes cluster runs in them.

pub mod tracker;
pub mod watch;

pub use tracker::{AppEnded, AppId, EndReason, Input, Tracker};
pub use watch::{Cleanup, Config, run};

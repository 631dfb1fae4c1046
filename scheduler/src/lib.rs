//! kshuffle-scheduler: the Kubernetes side of Spark's dynamic allocation.
//!
//! Module map (see `../shared/DESIGN.md`, "The scheduler"):
//! - [`config`]: Spark's flag names and defaults, parsed from `--conf key=value`, validated;
//! - [`policy`]: Spark's dynamic-allocation rules, pure, with an injected clock;
//! - [`scheduler`]: the Rust API (`request_total_executors`, `kill_executors`, events);
//! - [`snapshots`]: the watch and periodic list of the app's executor pods, one view;
//! - [`allocator`]: which pods to create and delete each round (pure) and applying it;
//! - [`pods`]: executor pods from a template, labelled and named as Spark does;
//! - [`events`]: a bounded, numbered log of executor events for the HTTP API;
//! - [`http`]: the HTTP/JSON API over the scheduler, `/metrics`, `/live`, `/ready`;
//! - [`args`], [`run`]: the binary's flags and service loop;
//! - [`metrics`]: metric names;
//! - [`ids`]: executor, stage, job, shuffle and RDD id newtypes.

pub mod allocator;
pub mod args;
pub mod config;
pub mod events;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod run;
pub mod scheduler;
pub mod snapshots;

pub use scheduler::Scheduler;

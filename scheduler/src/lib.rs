//! kshuffle-scheduler: the Kubernetes side of Spark's dynamic allocation.
//!
//! Module map (see `../shared/DESIGN.md`, "The scheduler"):
//! - [`config`]: Spark's flag names and defaults, parsed from `--conf key=value`, validated;
//! - [`policy`]: Spark's dynamic-allocation rules, pure, with an injected clock;
//! - [`ids`]: executor, stage, job, shuffle and RDD id newtypes.

pub mod config;
pub mod ids;
pub mod policy;

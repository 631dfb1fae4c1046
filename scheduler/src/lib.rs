//! kshuffle-scheduler: the Kubernetes side of Spark's dynamic allocation.
//!
//! This crate will own (see `../shared/DESIGN.md`, "The scheduler", and the scheduler issue):
//! - `policy`: Spark's dynamic-allocation semantics under Spark's flag names, pure, with an
//!   injected clock;
//! - `allocator`: executor pods created and deleted through the Kubernetes API in throttled
//!   batches, with a cap on pending pods and creation timeouts;
//! - `snapshots`: a watch of the application's executor pods feeding one in-memory view;
//! - front ends: a Rust API (`request_total_executors`, `kill_executors`) and an HTTP/JSON
//!   API with a binary configured by Spark-style `--conf` flags.
//!
//! Nothing is implemented yet: it is scheduled after the daemon, on which it is measured.

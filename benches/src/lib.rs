//! kshuffle-benches: measurements of the kshuffle daemon.
//!
//! This crate will own (see `../shared/DESIGN.md` and the benchmarks issue): a load generator
//! speaking Spark's protocol that lays out Spark-format shuffle files, fetches them as Spark's
//! fetcher does and verifies every byte; a side-by-side runner against Spark's own Java
//! shuffle service and the loopback limit of the machine; and micro-benchmarks of the codec
//! and the block store. Figures are reported as ratios measured in one run, never asserted in
//! tests.
//!
//! Nothing is implemented yet: the daemon it measures comes first.

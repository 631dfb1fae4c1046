//! kshuffle-sidecar: the executor-sidecar deployment of the kshuffle daemon.
//!
//! This crate will own (see `../shared/DESIGN.md`, "Deployments"): the mutating admission
//! webhook that injects the daemon as a sidecar into executor pods with an emptyDir as the
//! Spark local dir, the sidecar-mode composition that keeps serving after the executor exits
//! for as long as the application's driver lives, and the manifests.
//!
//! Nothing is implemented yet: it comes with the Kubernetes deployments issue.

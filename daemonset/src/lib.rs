//! kshuffle-daemonset: the node deployment of the kshuffle daemon.
//!
//! This crate will own (see `../shared/DESIGN.md`, "Deployments"): the node-mode composition
//! of the daemon with a watch of driver pods (cleanup when an application's driver ends), the
//! kustomize manifests of the DaemonSet on a hostPath, the executor pod template and the
//! `spark-submit --conf` flags that make an unmodified Spark use it, and their documentation.
//!
//! Nothing is implemented yet: it comes with the Kubernetes deployments issue.

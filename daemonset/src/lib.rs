//! kshuffle-daemonset: the node deployment of the kshuffle daemon.
//!
//! One daemon per Kubernetes node (a DaemonSet on a hostPath, see `../shared/DESIGN.md`,
//! "Deployments") serves every executor of the node. This crate adds what node mode needs on
//! top of the `kshuffle` daemon:
//!
//! - [`driver`]: a watch of Spark driver pods that removes an application's files once its
//!   driver ended (phase `Succeeded`/`Failed`, or the pod deleted), with a delay, through the
//!   daemon's one removal path;
//! - the `kshuffle-node` binary (`src/main.rs`): every `kshuffled` flag plus
//!   `--watch-namespace`, `--driver-cleanup-delay` and `--driver-watch`;
//! - [`pod_secrets`]: `--auth-from-pods`, the `spark.authenticate` secrets Spark puts in its
//!   executor pods, learned from the pods of this node.
//!
//! The kustomize manifests and their documentation live in `deploy/` and `README.md`.

pub mod driver;
pub mod pod_secrets;

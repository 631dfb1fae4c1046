//! Cluster DNS for the JVMs the process kubelet starts, as a hosts file per pod.
//!
//! A real pod resolves `<service>.<namespace>.svc[.cluster.local]` through the cluster DNS:
//! a headless Service (`clusterIP: None`, as Spark's driver Service is) to the IPs of its
//! ready endpoint pods. Here there is no DNS server, and the host's resolver knows none of
//! these names, so the kubelet writes one hosts file per Spark pod and starts its JVMs with
//! `-Djdk.net.hosts.file=<that file>` (in `JAVA_TOOL_OPTIONS`, so it reaches every JVM of the
//! container, e.g. the one `spark-submit` launches). With that property the JVM resolves
//! names from the file alone (not from DNS or `/etc/hosts`), so the file also carries
//! `localhost` and the machine's host name (as the pod's IP, like a pod's own host name),
//! and the JVM re-reads it on every lookup it does not have cached. The kubelet rewrites
//! the file whenever the Services or their endpoints change.
//!
//! Endpoints are the pods of the Service's namespace that match its `spec.selector`, are
//! Ready and not being deleted, as an EndpointSlice lists them. A Service with a cluster IP
//! also resolves to those pod IPs (there is no kube-proxy to route its cluster IP), which is
//! right only where each port equals its `targetPort`. Programs other than JVMs (Python,
//! our Rust binaries) still use the host's resolver: they do not see these names.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use super::super::objects::Resource;
use super::super::store::State;

/// The domain suffix of cluster names.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Service name → the IPs of its ready endpoint pods, for every Service with a selector.
/// Names are `<svc>.<ns>`, `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local`; a Service
/// with no ready endpoint has no entry (as its DNS name has no A record).
pub(super) fn service_addresses(state: &State) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for ((resource, ns, name), svc) in &state.objects {
        if *resource != Resource::Services {
            continue;
        }
        let Some(selector) = svc["spec"]["selector"]
            .as_object()
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let mut ips: Vec<String> = state
            .pods
            .iter()
            .filter(|((pod_ns, _), _)| pod_ns == ns)
            .filter(|(_, t)| t.delete_at.is_none())
            .filter_map(|(_, t)| {
                let labels = t.pod.metadata.labels.as_ref()?;
                let matches = selector.iter().all(|(k, v)| {
                    v.as_str()
                        .is_some_and(|v| labels.get(k).map(String::as_str) == Some(v))
                });
                let status = t.pod.status.as_ref()?;
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (matches && ready).then(|| status.pod_ip.clone()).flatten()
            })
            .collect();
        if ips.is_empty() {
            continue;
        }
        ips.sort();
        ips.dedup();
        for n in [
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
        ] {
            out.insert(n, ips.clone());
        }
    }
    out
}

/// The machine's host name (what `gethostname` returns to a JVM in any pod here).
pub(super) fn machine_hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The hosts file of a pod: `localhost`, the machine's host name and the pod's name as the
/// pod IP, then every Service name. One `IP name` line per address (the JVM collects every
/// line naming a host).
pub(super) fn hosts_text(
    pod_ip: &str,
    pod_name: &str,
    hostname: Option<&str>,
    services: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    out.push_str(pod_ip);
    for n in hostname.into_iter().chain([pod_name]) {
        out.push(' ');
        out.push_str(n);
    }
    out.push('\n');
    for (name, ips) in services {
        for ip in ips {
            out.push_str(&format!("{ip} {name}\n"));
        }
    }
    out
}

/// Replaces `path` with `text` at once (a JVM reading it sees the old or the new file).
pub(super) fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// `JAVA_TOOL_OPTIONS` for a container: `before` in order (blank ones skipped; later ones win
/// in the JVM), then the hosts-file property.
pub(super) fn java_tool_options(before: &[&str], hosts: &Path) -> String {
    let prop = format!("-Djdk.net.hosts.file={}", hosts.display());
    before
        .iter()
        .copied()
        .filter(|o| !o.trim().is_empty())
        .chain([prop.as_str()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_file_lists_localhost_the_pod_and_every_service_address() {
        let services: BTreeMap<String, Vec<String>> = [(
            "drv-svc.spark.svc".to_owned(),
            vec!["127.1.0.1".to_owned(), "127.1.0.2".to_owned()],
        )]
        .into_iter()
        .collect();
        let text = hosts_text("127.1.0.9", "exec-1", Some("vm"), &services);
        assert_eq!(
            text,
            "127.0.0.1 localhost\n127.1.0.9 vm exec-1\n\
             127.1.0.1 drv-svc.spark.svc\n127.1.0.2 drv-svc.spark.svc\n"
        );
        assert_eq!(
            hosts_text("127.1.0.9", "p", None, &BTreeMap::new()),
            "127.0.0.1 localhost\n127.1.0.9 p\n"
        );
    }

    #[test]
    fn java_tool_options_keep_the_containers_own() {
        let hosts = Path::new("/w/hosts");
        assert_eq!(
            java_tool_options(&[], hosts),
            "-Djdk.net.hosts.file=/w/hosts"
        );
        assert_eq!(
            java_tool_options(&[" "], hosts),
            "-Djdk.net.hosts.file=/w/hosts"
        );
        assert_eq!(
            java_tool_options(&["-Xss4m"], hosts),
            "-Xss4m -Djdk.net.hosts.file=/w/hosts"
        );
        assert_eq!(
            java_tool_options(&["-XX:+UseSerialGC", "", "-Xss4m"], hosts),
            "-XX:+UseSerialGC -Xss4m -Djdk.net.hosts.file=/w/hosts"
        );
    }
}

//! The TCP congestion control of shuffle connections (`--tcp-congestion-control`).
//!
//! A shuffle service's traffic is bulk transfers inside a cluster. Some nodes make BBR their
//! default (`net.ipv4.tcp_congestion_control`); without the `fq` qdisc BBR paces every
//! connection with its own timers, and on this machine's loopback (BBR default, no `fq`) that
//! halved the throughput of 4 MiB blocks and doubled the daemon's CPU per byte against CUBIC,
//! Linux's own default (README, Benchmarks, "TCP congestion control"). So the daemon sets
//! CUBIC on its connections unless told otherwise; `system` leaves the node's default.
//!
//! The choice is tried once at start on a scratch socket: an algorithm the kernel lacks, or
//! may not give this process (one outside `net.ipv4.tcp_allowed_congestion_control` needs
//! `CAP_NET_ADMIN`), is an error when named on the command line. Without the flag the
//! daemon takes the first of [`DEFAULTS`] it may use: should CUBIC be refused to a daemon
//! without privileges (as the DaemonSet's is), Reno, always allowed, behaves like CUBIC at
//! a cluster's round-trip times (CUBIC grows its window as Reno does there). If none is
//! usable, a warning, and connections keep the node's default.

use anyhow::bail;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType, socket, sockopt};
use tracing::{info, warn};

/// The algorithms tried, in order, when the flag is not given.
pub const DEFAULTS: [&str; 2] = ["cubic", "reno"];
/// The flag's value that leaves connections on the node's default.
pub const SYSTEM: &str = "system";

/// What `--tcp-congestion-control` (`flag`) resolves to: the algorithm to set on every
/// shuffle connection, or `None` to leave them on the node's default.
///
/// # Errors
/// An algorithm named on the command line that this process cannot use.
pub fn resolve(flag: Option<&str>) -> anyhow::Result<Option<String>> {
    resolve_with(flag, &DEFAULTS)
}

fn resolve_with(flag: Option<&str>, defaults: &[&str]) -> anyhow::Result<Option<String>> {
    let system = system_default().unwrap_or_else(|| "unknown".to_owned());
    let chosen = |name: &str| {
        info!(algorithm = name, system_default = %system,
            "TCP congestion control of shuffle connections");
        Some(name.to_owned())
    };
    match flag {
        Some(SYSTEM) => Ok(None),
        Some(name) => match try_on_a_socket(name) {
            Ok(()) => Ok(chosen(name)),
            Err(e) => bail!("--tcp-congestion-control {name}: {}", explain(e)),
        },
        None => {
            let mut refused = Vec::new();
            for name in defaults {
                match try_on_a_socket(name) {
                    Ok(()) => return Ok(chosen(name)),
                    Err(e) => refused.push(format!("{name}: {}", explain(e))),
                }
            }
            warn!(system_default = %system, refused = ?refused,
                "cannot use any default TCP congestion control; connections keep the node's default (set --tcp-congestion-control to one this process may use, or to system)");
            Ok(None)
        }
    }
}

/// Sets `name` on a fresh, unconnected TCP socket.
fn try_on_a_socket(name: &str) -> Result<(), Errno> {
    let probe = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    sockopt::set_tcp_congestion(&probe, name)
}

fn explain(e: Errno) -> String {
    match e {
        Errno::NOENT => format!(
            "{e}: not available in this kernel (see net.ipv4.tcp_available_congestion_control)"
        ),
        Errno::PERM | Errno::ACCESS => format!(
            "{e}: not permitted without CAP_NET_ADMIN (see net.ipv4.tcp_allowed_congestion_control)"
        ),
        other => other.to_string(),
    }
}

/// The node's default algorithm, if readable.
pub fn system_default() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_leaves_the_default_and_a_named_algorithm_must_work() {
        assert_eq!(resolve(Some(SYSTEM)).unwrap(), None);
        // Reno is built into every kernel and always allowed.
        assert_eq!(resolve(Some("reno")).unwrap().as_deref(), Some("reno"));
        let err = resolve(Some("no-such-algorithm")).unwrap_err().to_string();
        assert!(
            err.contains("--tcp-congestion-control no-such-algorithm")
                && err.contains("not available"),
            "{err}"
        );
    }

    #[test]
    fn the_first_usable_default_is_taken_and_none_usable_only_warns() {
        assert_eq!(
            resolve_with(None, &["no-such-algorithm", "reno"])
                .unwrap()
                .as_deref(),
            Some("reno")
        );
        assert_eq!(resolve_with(None, &["no-such-algorithm"]).unwrap(), None);
        assert_eq!(DEFAULTS, ["cubic", "reno"]);
    }
}

//! Flags of `kshuffle-sidecar webhook`, validated into an [`inject::Config`] and [`Settings`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kshuffle::daemon::{LogFormat, parse_duration};

use super::Settings;
use crate::inject::Config;

/// `kshuffle-sidecar webhook`: serve the mutating admission webhook over HTTPS.
#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// PEM certificate chain served (re-read when it changes, e.g. a renewed Secret).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_CERT_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,
    /// Listen address.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTPS port (`/mutate`, `/healthz`, `/readyz`).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_PORT", default_value_t = 8443)]
    pub port: u16,
    /// Image of the injected sidecar container (its entrypoint is `kshuffle-sidecar`).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_IMAGE")]
    pub image: String,
    /// `imagePullPolicy` of the sidecar (Always, IfNotPresent, Never); unset: the API server's default.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,
    /// Name of the injected container.
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_CONTAINER_NAME",
        default_value = "kshuffle"
    )]
    pub container_name: String,
    /// Spark's `spark.shuffle.service.port`, where the sidecar listens in the pod.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_SHUFFLE_PORT", default_value_t = 7337)]
    pub shuffle_port: u16,
    /// The sidecar's admin port (probes, metrics).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_ADMIN_PORT", default_value_t = 7338)]
    pub admin_port: u16,
    /// CPU request of the sidecar (a Kubernetes quantity).
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_SIDECAR_CPU_REQUEST",
        default_value = "100m"
    )]
    pub sidecar_cpu_request: String,
    /// Memory request of the sidecar.
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_SIDECAR_MEMORY_REQUEST",
        default_value = "64Mi"
    )]
    pub sidecar_memory_request: String,
    /// CPU limit of the sidecar (empty: none).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_SIDECAR_CPU_LIMIT", default_value = "")]
    pub sidecar_cpu_limit: String,
    /// Memory limit of the sidecar (empty: none).
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_SIDECAR_MEMORY_LIMIT",
        default_value = "256Mi"
    )]
    pub sidecar_memory_limit: String,
    /// `runAsUser`/`runAsGroup` of the sidecar when neither the executor container nor the
    /// pod sets them (Spark's image runs as 185).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_SIDECAR_RUN_AS", default_value_t = 185)]
    pub sidecar_run_as: i64,
    /// `--log-level` of the sidecar.
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_SIDECAR_LOG_LEVEL",
        default_value = "info"
    )]
    pub sidecar_log_level: String,
    /// Serve TLS in every sidecar (Spark 4's `spark.ssl.rpc.enabled`) with this
    /// `kubernetes.io/tls` Secret, which must exist in each executor pod's namespace; mounted
    /// at `/etc/kshuffle/tls`. Empty: no TLS.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_SIDECAR_TLS_SECRET", default_value = "")]
    pub sidecar_tls_secret: String,
    /// Minimum `terminationGracePeriodSeconds` of injected pods: the longest the sidecar keeps
    /// serving after its pod is deleted, while the driver lives (e.g. `1h`, `30m`).
    #[arg(long, env = "KSHUFFLE_WEBHOOK_GRACE_PERIOD", default_value = "1h", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Local dir of executors that mount no `spark-local-dir-N` volume.
    #[arg(
        long,
        env = "KSHUFFLE_WEBHOOK_FALLBACK_LOCAL_DIR",
        default_value = "/var/data/kshuffle"
    )]
    pub fallback_local_dir: PathBuf,
    /// Largest request body.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Deadline for the TLS handshake, the request header and the body.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Most open connections.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// On SIGTERM, how long open requests may finish.
    #[arg(long, env = "KSHUFFLE_WEBHOOK_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log filter (`RUST_LOG` overrides).
    #[arg(long, env = "KSHUFFLE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "KSHUFFLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl WebhookArgs {
    /// Validates the flags.
    ///
    /// # Errors
    /// A message naming the bad flag.
    pub fn validate(&self) -> anyhow::Result<(Config, Settings)> {
        let Self {
            tls_cert_file: _,
            tls_key_file: _,
            cert_reload_interval,
            bind: _,
            port: _,
            image,
            image_pull_policy,
            container_name,
            shuffle_port,
            admin_port,
            sidecar_cpu_request,
            sidecar_memory_request,
            sidecar_cpu_limit,
            sidecar_memory_limit,
            sidecar_run_as,
            sidecar_log_level,
            sidecar_tls_secret,
            grace_period,
            fallback_local_dir,
            max_body_bytes,
            request_timeout,
            max_connections,
            shutdown_grace,
            log_level: _,
            log_format: _,
        } = self;
        if image.trim().is_empty() {
            bail!("--image must name the sidecar image");
        }
        if let Some(policy) = image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            bail!("--image-pull-policy must be Always, IfNotPresent or Never, not {policy:?}");
        }
        if !is_dns_label(container_name) {
            bail!("--container-name {container_name:?} is not a DNS-1123 label");
        }
        if *shuffle_port == 0 || *admin_port == 0 || shuffle_port == admin_port {
            bail!("--shuffle-port and --admin-port must be two different non-zero ports");
        }
        if *sidecar_run_as <= 0 {
            bail!("--sidecar-run-as must be a non-root uid (> 0)");
        }
        if cert_reload_interval.is_zero() || request_timeout.is_zero() {
            bail!("--cert-reload-interval and --request-timeout must be > 0");
        }
        if *max_body_bytes == 0 || *max_connections == 0 {
            bail!("--max-body-bytes and --max-connections must be > 0");
        }
        let grace_period_seconds =
            i64::try_from(grace_period.as_secs()).context("--grace-period too large")?;
        if !fallback_local_dir.is_absolute() {
            bail!("--fallback-local-dir must be an absolute path");
        }
        let quantity = |flag: &str, value: &str| -> anyhow::Result<Option<Quantity>> {
            if value.is_empty() {
                return Ok(None);
            }
            if !is_quantity(value) {
                bail!("--{flag} {value:?} is not a Kubernetes quantity (e.g. 100m, 1, 64Mi, 1Gi)");
            }
            Ok(Some(Quantity(value.to_owned())))
        };
        let pair = |cpu: Option<Quantity>, memory: Option<Quantity>| {
            let map: std::collections::BTreeMap<String, Quantity> =
                [("cpu", cpu), ("memory", memory)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                    .collect();
            (!map.is_empty()).then_some(map)
        };
        let resources = ResourceRequirements {
            requests: pair(
                quantity("sidecar-cpu-request", sidecar_cpu_request)?,
                quantity("sidecar-memory-request", sidecar_memory_request)?,
            ),
            limits: pair(
                quantity("sidecar-cpu-limit", sidecar_cpu_limit)?,
                quantity("sidecar-memory-limit", sidecar_memory_limit)?,
            ),
            ..ResourceRequirements::default()
        };
        let config = Config {
            image: image.clone(),
            image_pull_policy: image_pull_policy.clone(),
            container_name: container_name.clone(),
            shuffle_port: *shuffle_port,
            admin_port: *admin_port,
            resources,
            grace_period_seconds,
            fallback_local_dir: fallback_local_dir.display().to_string(),
            default_run_as: *sidecar_run_as,
            log_level: sidecar_log_level.clone(),
            tls_secret: (!sidecar_tls_secret.is_empty()).then(|| sidecar_tls_secret.clone()),
        };
        let settings = Settings {
            max_body_bytes: *max_body_bytes,
            request_timeout: *request_timeout,
            max_connections: *max_connections,
            shutdown_grace: *shutdown_grace,
        };
        Ok((config, settings))
    }
}

/// RFC 1123 label: lower-case alphanumerics and '-', 1 to 63 chars, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A Kubernetes quantity as resource flags use them: a non-negative decimal number and an
/// optional suffix (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki`..`Ei`).
fn is_quantity(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    number_ok && suffixes.contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookArgs,
    }

    fn parse(extra: &[&str]) -> anyhow::Result<(Config, Settings)> {
        let mut argv = vec![
            "t",
            "--tls-cert-file=/c",
            "--tls-key-file=/k",
            "--image=img:1",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)?.args.validate()
    }

    #[test]
    fn defaults_give_a_usable_config() {
        let (config, settings) = parse(&[]).unwrap();
        assert_eq!(config.image, "img:1");
        assert_eq!(config.grace_period_seconds, 3600);
        assert_eq!(config.shuffle_port, 7337);
        let requests = config.resources.requests.unwrap();
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(requests["memory"].0, "64Mi");
        let limits = config.resources.limits.unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits["memory"].0, "256Mi");
        assert_eq!(settings.max_body_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn flags_are_validated_with_a_message_naming_them() {
        let (config, _) = parse(&["--grace-period=30m", "--sidecar-cpu-limit=2"]).unwrap();
        assert_eq!(config.grace_period_seconds, 1800);
        assert_eq!(config.resources.limits.unwrap()["cpu"].0, "2");
        for (flag, needle) in [
            ("--sidecar-memory-request=lots", "--sidecar-memory-request"),
            ("--sidecar-cpu-request=1.2.3", "--sidecar-cpu-request"),
            ("--container-name=Kshuffle", "--container-name"),
            ("--image-pull-policy=Sometimes", "--image-pull-policy"),
            ("--admin-port=7337", "--admin-port"),
            ("--sidecar-run-as=0", "--sidecar-run-as"),
            ("--fallback-local-dir=relative", "--fallback-local-dir"),
            ("--image= ", "--image"),
        ] {
            let err = parse(&[flag]).unwrap_err().to_string();
            assert!(err.contains(needle), "{flag}: {err}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["1", "100m", "0.5", "64Mi", "1Gi", "2k", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "64MB", "-1", "1 Gi", "Mi64"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}

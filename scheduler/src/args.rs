//! Command-line flags of `kshuffle-scheduler`. Spark settings come as `--conf key=value`
//! (repeatable, as with `spark-submit`) or from a properties file; everything is validated
//! before anything starts, and a bad value exits 64 naming the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::Config;
use crate::pods::{self, Template};

/// The flags.
#[derive(Debug, Parser)]
#[command(
    name = "kshuffle-scheduler",
    version,
    about = "Scales Spark executor pods on Kubernetes"
)]
pub struct Args {
    /// A Spark setting, `key=value`; repeat for more (e.g. `--conf spark.app.id=app-1`).
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    pub conf: Vec<String>,
    /// A Spark properties file (`key=value` or `key value` lines, `#` comments), read before
    /// the `--conf` flags, which win.
    #[arg(long, env = "KSHUFFLE_SCHEDULER_PROPERTIES_FILE")]
    pub properties_file: Option<PathBuf>,
    /// Address of the HTTP API, `/metrics`, `/live` and `/ready`.
    #[arg(
        long,
        env = "KSHUFFLE_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    pub listen: SocketAddr,
    /// API server URL, plain HTTP without auth (for tests and `kubectl proxy`); otherwise the
    /// in-cluster or kubeconfig settings are used.
    #[arg(long, env = "KSHUFFLE_SCHEDULER_KUBE_URL")]
    pub kube_url: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "KSHUFFLE_SCHEDULER_LOG_JSON")]
    pub log_json: bool,
    /// File holding a bearer token that every request to the allocation API (`/v1/...`)
    /// must carry (`Authorization: Bearer …`). Required when `--listen` is not a loopback
    /// address, unless `--open-api`.
    #[arg(long, env = "KSHUFFLE_SCHEDULER_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Serves the allocation API without a token on a `--listen` address that is not
    /// loopback: anyone who reaches it can then create and delete the application's
    /// executor pods. Only where the network already limits who does (a NetworkPolicy).
    #[arg(long, env = "KSHUFFLE_SCHEDULER_OPEN_API")]
    pub open_api: bool,
    /// The executor pod Spark's own builder made in the driver (JSON or YAML), written by the
    /// JVM adapter (`scheduler/jvm`, `spark.kubernetes.allocation.pods.allocator`): used as it
    /// is but for each executor's name, labels, id and hostname. The settings that shaped it
    /// (image, pod template, resources) are then not applied again, and Spark keys under our
    /// prefixes that this scheduler does not know are ignored (Spark has checked them).
    #[arg(long, value_name = "FILE")]
    pub spark_executor_pod: Option<PathBuf>,
    /// Writes the HTTP API's bound address (`ip:port`) to this file once it listens, for
    /// `--listen 127.0.0.1:0`.
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,
    /// The lowest executor id to create (ids above every executor pod seen are used in any
    /// case): for a scheduler started again for a running driver, one above every id that
    /// driver has seen, so none is reused.
    #[arg(long, value_name = "ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_executor_id: u64,
    /// Stops (as on SIGTERM) when standard input reaches its end: a parent that started this
    /// process holds the other end of the pipe, and the scheduler never outlives it.
    #[arg(long)]
    pub stop_on_stdin_eof: bool,
}

/// What the flags resolve to.
#[derive(Debug)]
pub struct Settings {
    /// The Spark configuration.
    pub config: Config,
    /// The executor pod template, when one is configured (or Spark's executor pod).
    pub template: Option<Template>,
    /// See [`Args::listen`].
    pub listen: SocketAddr,
    /// See [`Args::kube_url`].
    pub kube_url: Option<String>,
    /// See [`Args::log_json`].
    pub log_json: bool,
    /// See [`Args::address_file`].
    pub address_file: Option<PathBuf>,
    /// The token of [`Args::api_token_file`].
    pub api_token: Option<String>,
    /// See [`Args::stop_on_stdin_eof`].
    pub stop_on_stdin_eof: bool,
}

fn properties(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| match l.split_once(['=', ' ', '\t', ':']) {
            Some((k, v)) => format!("{}={}", k.trim(), v.trim()),
            None => l.to_owned(),
        })
        .collect()
}

impl Args {
    /// Validates everything, reading the properties file and the pod template.
    ///
    /// # Errors
    /// A message naming the bad flag, key or file.
    pub fn settings(self) -> anyhow::Result<Settings> {
        let Args {
            conf,
            properties_file,
            listen,
            kube_url,
            log_json,
            api_token_file,
            open_api,
            spark_executor_pod,
            address_file,
            first_executor_id,
            stop_on_stdin_eof,
        } = self;
        let mut all = Vec::new();
        if let Some(path) = &properties_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--properties-file {}", path.display()))?;
            all.extend(properties(&text));
        }
        all.extend(conf);
        let mut config = if spark_executor_pod.is_some() {
            Config::from_spark_args(all.iter().map(String::as_str))?
        } else {
            Config::from_args(all.iter().map(String::as_str))?
        };
        config.kubernetes.first_executor_id = first_executor_id;
        let k = &config.kubernetes;
        let template = match (&spark_executor_pod, &k.pod_template_file) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--spark-executor-pod {}", path.display()))?;
                let pod =
                    pods::parse_template(&text, None, k.pod_template_container_name.as_deref())
                        .with_context(|| format!("--spark-executor-pod {}", path.display()))?;
                Some(Template::Spark(pod))
            }
            (None, None) => None,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("spark.kubernetes.executor.podTemplateFile {path}"))?;
                let pod = pods::parse_template(
                    &text,
                    k.container_image.as_deref(),
                    k.pod_template_container_name.as_deref(),
                )
                .with_context(|| format!("spark.kubernetes.executor.podTemplateFile {path}"))?;
                Some(Template::User(pod))
            }
        };
        if template.is_none() && k.container_image.is_none() {
            anyhow::bail!(
                "set spark.kubernetes.container.image or spark.kubernetes.executor.podTemplateFile"
            );
        }
        let api_token = match &api_token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("--api-token-file {}", path.display()))?;
                let token = token.trim().to_owned();
                anyhow::ensure!(
                    !token.is_empty(),
                    "--api-token-file {} is empty",
                    path.display()
                );
                Some(token)
            }
        };
        // As the daemon's admin API: what can delete executor pods is not open to the
        // network by default.
        anyhow::ensure!(
            api_token.is_some() || open_api || listen.ip().is_loopback(),
            "--listen {listen} is not a loopback address: the allocation API there (which \
             creates and deletes executor pods) needs --api-token-file, or --open-api where \
             the network already limits who reaches it"
        );
        if let Some(url) = &kube_url {
            url.parse::<axum::http::Uri>()
                .with_context(|| format!("--kube-url {url}"))?;
        }
        Ok(Settings {
            config,
            template,
            listen,
            kube_url,
            log_json,
            address_file,
            api_token,
            stop_on_stdin_eof,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let mut all = vec!["kshuffle-scheduler"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)?.settings()
    }

    #[test]
    fn spark_style_conf_flags() {
        let s = settings(&[
            "--conf",
            "spark.app.id=a1",
            "--conf=spark.kubernetes.container.image=spark:4",
            "--conf",
            "spark.dynamicAllocation.maxExecutors=7",
        ])
        .unwrap();
        assert_eq!(s.config.app_id, "a1");
        assert_eq!(s.config.dynamic_allocation.max_executors, 7);
    }

    #[test]
    fn bad_flags_name_what_is_wrong() {
        let img = "spark.kubernetes.container.image=i";
        for (args, needle) in [
            (
                vec![
                    "--conf",
                    img,
                    "--conf",
                    "spark.dynamicAllocation.minExecutors=-2",
                ],
                "spark.dynamicAllocation.minExecutors",
            ),
            (
                vec!["--conf", img, "--conf", "spark.dynamicAllocation.typo=1"],
                "spark.dynamicAllocation.typo",
            ),
            (
                vec!["--conf", "spark.app.id=x"],
                "spark.kubernetes.container.image",
            ),
            (
                vec![
                    "--conf",
                    img,
                    "--conf",
                    "spark.kubernetes.executor.podTemplateFile=/nonexistent.yaml",
                ],
                "podTemplateFile",
            ),
            (vec!["--conf", img, "--kube-url", "not a url"], "--kube-url"),
            (vec!["--conf", img, "--conf", "novalue"], "novalue"),
            (
                vec!["--conf", img, "--listen", "0.0.0.0:7400"],
                "--api-token-file, or --open-api",
            ),
        ] {
            let err = format!("{:#}", settings(&args).unwrap_err());
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_template_that_is_not_a_pod_is_refused() {
        let dir = std::env::temp_dir().join(format!("kshuffle-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.yaml");
        std::fs::write(&path, "kind: Service\napiVersion: v1\n").unwrap();
        let conf = format!(
            "spark.kubernetes.executor.podTemplateFile={}",
            path.display()
        );
        let err = format!("{:#}", settings(&["--conf", &conf]).unwrap_err());
        assert!(err.contains("not a valid Pod"), "{err}");
        std::fs::write(&path, "spec: {containers: [{name: c, image: 'spark:4'}]}\n").unwrap();
        assert!(settings(&["--conf", &conf]).unwrap().template.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_api_is_served_beyond_loopback_with_a_token_or_when_opened() {
        let img = "spark.kubernetes.container.image=i";
        for listen in ["127.0.0.1:7400", "[::1]:7400"] {
            assert!(settings(&["--conf", img, "--listen", listen]).is_ok());
        }
        let open = settings(&["--conf", img, "--listen", "0.0.0.0:7400", "--open-api"]);
        assert_eq!(open.unwrap().api_token, None);
        let token = std::env::temp_dir().join(format!("kshuffle-sched-tok-{}", std::process::id()));
        std::fs::write(&token, "t0ken\n").unwrap();
        let path = token.to_str().unwrap();
        let s = settings(&[
            "--conf",
            img,
            "--listen",
            "10.0.0.5:7400",
            "--api-token-file",
            path,
        ]);
        assert_eq!(s.unwrap().api_token.as_deref(), Some("t0ken"));
        std::fs::remove_file(&token).unwrap();
    }

    #[test]
    fn properties_files() {
        let p = properties("# comment\nspark.app.id a2\nspark.task.cpus=1\n\n");
        assert_eq!(p, ["spark.app.id=a2", "spark.task.cpus=1"]);
    }
}

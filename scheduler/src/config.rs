//! Spark configuration, under Spark's own keys and defaults, parsed from `key=value` pairs
//! (`--conf` flags) into typed structs and validated up front.
//!
//! Where each default and check comes from (Spark 4.x source):
//! - `spark.dynamicAllocation.*`: `core/.../internal/config/package.scala`
//!   (`DYN_ALLOCATION_*`) and `ExecutorAllocationManager.validateSettings`;
//! - `spark.kubernetes.*`: `resource-managers/kubernetes/core/.../deploy/k8s/Config.scala`;
//! - `spark.executor.maxNumFailures` / `failuresValidityInterval`: `package.scala`
//!   (`MAX_EXECUTOR_FAILURES`, default from `ExecutorFailureTracker.maxNumExecutorFailures`:
//!   `max(3, 2 * maxExecutors)`).
//!
//! Unknown keys under the prefixes we own (`spark.dynamicAllocation.`,
//! `spark.kubernetes.allocation.`, ...) are rejected naming the key; other `spark.*` keys are
//! Spark's business and are ignored, so a driver's whole conf can be passed through.

use std::collections::BTreeMap;
use std::time::Duration;

/// A bad configuration value, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A key under a prefix we own that we do not know.
    #[error("unknown configuration key {key}")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--conf` argument without `=`.
    #[error("--conf {0:?} is not of the form key=value")]
    NotKeyValue(String),
}

impl Error {
    /// A label for metrics and logs. Always caused by the user's configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownKey { .. } => "unknown_key",
            Self::Invalid { .. } => "invalid_value",
            Self::NotKeyValue(_) => "not_key_value",
        }
    }
}

/// `spark.dynamicAllocation.*` and the executor settings the policy needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicAllocation {
    /// `spark.dynamicAllocation.enabled` (false).
    pub enabled: bool,
    /// `spark.dynamicAllocation.minExecutors` (0).
    pub min_executors: u32,
    /// `spark.dynamicAllocation.maxExecutors` (Int.MaxValue).
    pub max_executors: u32,
    /// Effective initial target: `Utils.getDynamicAllocationInitialExecutors`, the max of
    /// `minExecutors`, `initialExecutors` (defaults to `minExecutors`) and
    /// `spark.executor.instances` when set.
    pub initial_executors: u32,
    /// `spark.dynamicAllocation.executorAllocationRatio` (1.0), in (0, 1].
    pub allocation_ratio: f64,
    /// `spark.dynamicAllocation.schedulerBacklogTimeout` (1s).
    pub scheduler_backlog_timeout: Duration,
    /// `spark.dynamicAllocation.sustainedSchedulerBacklogTimeout` (the backlog timeout).
    pub sustained_scheduler_backlog_timeout: Duration,
    /// `spark.dynamicAllocation.executorIdleTimeout` (60s).
    pub executor_idle_timeout: Duration,
    /// `spark.dynamicAllocation.cachedExecutorIdleTimeout` (Int.MaxValue seconds: never).
    pub cached_executor_idle_timeout: Duration,
    /// `spark.dynamicAllocation.shuffleTracking.enabled` (true since Spark 3.4).
    pub shuffle_tracking_enabled: bool,
    /// `spark.dynamicAllocation.shuffleTracking.timeout` (Long.MaxValue ms: never).
    pub shuffle_tracking_timeout: Duration,
    /// `spark.shuffle.service.enabled` (false).
    pub shuffle_service_enabled: bool,
    /// `spark.shuffle.service.fetch.rdd.enabled` (false): cached blocks on disk are served by
    /// the service, so they do not keep an executor.
    pub shuffle_service_fetch_rdd_enabled: bool,
    /// `spark.executor.cores` / `spark.task.cpus` (1 / 1).
    pub tasks_per_executor: u32,
}

/// `spark.kubernetes.*` settings of the allocator and snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubernetes {
    /// `spark.kubernetes.namespace` ("default").
    pub namespace: String,
    /// `spark.kubernetes.driver.pod.name` (none: no owner reference).
    pub driver_pod_name: Option<String>,
    /// `spark.kubernetes.executor.podNamePrefix` (defaults to the app id).
    pub pod_name_prefix: Option<String>,
    /// `spark.kubernetes.executor.podTemplateFile`.
    pub pod_template_file: Option<String>,
    /// `spark.kubernetes.executor.podTemplateContainerName`.
    pub pod_template_container_name: Option<String>,
    /// `spark.kubernetes.container.image` / `spark.kubernetes.executor.container.image`.
    pub container_image: Option<String>,
    /// `spark.kubernetes.allocation.batch.size` (10 in Spark 4.x; 5 in 3.x).
    pub batch_size: u32,
    /// `spark.kubernetes.allocation.batch.delay` (1s).
    pub batch_delay: Duration,
    /// `spark.kubernetes.allocation.maxPendingPods` (Int.MaxValue).
    pub max_pending_pods: u32,
    /// `spark.kubernetes.allocation.executor.timeout` (600s); the effective pod creation
    /// timeout is `max(5 * batch.delay, this)` (`ExecutorPodsAllocator.podCreationTimeout`).
    pub executor_timeout: Duration,
    /// `spark.kubernetes.executor.deleteOnTermination` (true).
    pub delete_on_termination: bool,
    /// `spark.kubernetes.executor.apiPollingInterval` (30s): the periodic relist.
    pub api_polling_interval: Duration,
    /// `spark.kubernetes.dynamicAllocation.deleteGracePeriod` (5s).
    pub delete_grace_period: Duration,
    /// `spark.executor.maxNumFailures` (max(3, 2 * maxExecutors)).
    pub max_executor_failures: u32,
    /// `spark.executor.failuresValidityInterval` (none: failures never expire).
    pub failures_validity_interval: Option<Duration>,
    /// Not a Spark setting (`--first-executor-id`; 1): the lowest executor id to create. A
    /// scheduler started again for a running driver must not reuse the ids of executors the
    /// driver has already seen come and go, whose pods are gone and so out of its view.
    pub first_executor_id: u64,
}

impl Kubernetes {
    /// `ExecutorPodsAllocator.podCreationTimeout`: `max(5 * batch.delay, executor.timeout)`.
    pub fn pod_creation_timeout(&self) -> Duration {
        self.executor_timeout
            .max(self.batch_delay.saturating_mul(5))
    }
}

/// What each executor gets, as `BasicExecutorFeatureStep` computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Executor {
    /// `spark.executor.cores` (1).
    pub cores: u32,
    /// `spark.executor.memory` in MiB (1g).
    pub memory_mib: u64,
    /// `spark.executor.memoryOverhead` in MiB, else
    /// `max(spark.executor.memoryOverheadFactor (0.1) * memory, 384)`.
    pub overhead_mib: u64,
    /// `spark.kubernetes.executor.request.cores` (defaults to the cores).
    pub request_cores: Option<String>,
    /// `spark.kubernetes.executor.limit.cores` (none).
    pub limit_cores: Option<String>,
    /// `spark://CoarseGrainedScheduler@<spark.driver.host>:<spark.driver.port>`, when the
    /// driver host is set.
    pub driver_url: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `spark.app.id`.
    pub app_id: String,
    /// Dynamic allocation.
    pub dynamic_allocation: DynamicAllocation,
    /// Kubernetes allocation.
    pub kubernetes: Kubernetes,
    /// Executor resources and driver address.
    pub executor: Executor,
}

const OWNED_PREFIXES: [&str; 4] = [
    "spark.dynamicAllocation.",
    "spark.kubernetes.allocation.",
    "spark.kubernetes.executor.",
    "spark.kubernetes.dynamicAllocation.",
];

const KNOWN: &[&str] = &[
    "spark.app.id",
    "spark.dynamicAllocation.enabled",
    "spark.dynamicAllocation.minExecutors",
    "spark.dynamicAllocation.maxExecutors",
    "spark.dynamicAllocation.initialExecutors",
    "spark.dynamicAllocation.executorAllocationRatio",
    "spark.dynamicAllocation.schedulerBacklogTimeout",
    "spark.dynamicAllocation.sustainedSchedulerBacklogTimeout",
    "spark.dynamicAllocation.executorIdleTimeout",
    "spark.dynamicAllocation.cachedExecutorIdleTimeout",
    "spark.dynamicAllocation.shuffleTracking.enabled",
    "spark.dynamicAllocation.shuffleTracking.timeout",
    "spark.shuffle.service.enabled",
    "spark.shuffle.service.fetch.rdd.enabled",
    "spark.executor.instances",
    "spark.executor.cores",
    "spark.task.cpus",
    "spark.kubernetes.namespace",
    "spark.kubernetes.driver.pod.name",
    "spark.kubernetes.executor.podNamePrefix",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.executor.podTemplateContainerName",
    "spark.kubernetes.container.image",
    "spark.kubernetes.executor.container.image",
    "spark.kubernetes.allocation.batch.size",
    "spark.kubernetes.allocation.batch.delay",
    "spark.kubernetes.allocation.maxPendingPods",
    "spark.kubernetes.allocation.executor.timeout",
    "spark.kubernetes.executor.deleteOnTermination",
    "spark.kubernetes.executor.apiPollingInterval",
    "spark.kubernetes.dynamicAllocation.deleteGracePeriod",
    "spark.executor.maxNumFailures",
    "spark.executor.failuresValidityInterval",
    "spark.executor.memory",
    "spark.executor.memoryOverhead",
    "spark.executor.memoryOverheadFactor",
    "spark.kubernetes.executor.request.cores",
    "spark.kubernetes.executor.limit.cores",
    "spark.driver.host",
    "spark.driver.port",
];

/// Parses Spark's size strings (`JavaUtils.byteStringAs`) into MiB, rounding up: a number
/// with an optional unit `b`, `k`/`kb`, `m`/`mb`, `g`/`gb`, `t`/`tb`; a bare number is MiB.
pub fn parse_mib(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "" | "m" | "mb" => Some(n),
        "b" => Some(n.div_ceil(1 << 20)),
        "k" | "kb" => Some(n.div_ceil(1024)),
        "g" | "gb" => n.checked_mul(1 << 10),
        "t" | "tb" => n.checked_mul(1 << 20),
        _ => None,
    }
}

/// Parses Spark's time strings (`JavaUtils.timeStringAs`): a number with an optional unit
/// `us`, `ms`, `s`, `m`/`min`, `h`, `d`; a bare number takes `default_unit`.
pub fn parse_time(s: &str, default_unit: Duration) -> Option<Duration> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let unit = match unit.trim() {
        "" => default_unit,
        "us" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return None,
    };
    Some(
        unit.checked_mul(u32::try_from(n).ok()?)
            .unwrap_or(Duration::MAX),
    )
}

struct Conf<'a> {
    map: &'a BTreeMap<String, String>,
}

impl Conf<'_> {
    fn raw(&self, key: &'static str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            key,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, Error> {
        match self.raw(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" => Ok(true),
            Some(v) if v == "false" => Ok(false),
            Some(v) => Err(Self::invalid(key, &v, "expected true or false")),
        }
    }

    /// A non-negative int (Spark's intConf; a negative value is an error naming the key).
    fn count(&self, key: &'static str, default: u32) -> Result<u32, Error> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => {
                let n: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| Self::invalid(key, v, "expected an integer"))?;
                if n < 0 {
                    return Err(Self::invalid(key, v, "must not be negative"));
                }
                u32::try_from(n).map_err(|_| Self::invalid(key, v, "too large"))
            }
        }
    }

    fn positive(&self, key: &'static str, default: u32) -> Result<u32, Error> {
        let n = self.count(key, default)?;
        if n == 0 {
            return Err(Self::invalid(key, "0", "must be positive"));
        }
        Ok(n)
    }

    fn time(
        &self,
        key: &'static str,
        default: Duration,
        unit: Duration,
    ) -> Result<Duration, Error> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) if v.trim().starts_with('-') => {
                Err(Self::invalid(key, v, "must not be negative"))
            }
            Some(v) => parse_time(v, unit)
                .ok_or_else(|| Self::invalid(key, v, "expected a time such as 500ms, 30s, 5min")),
        }
    }

    fn string(&self, key: &'static str) -> Option<String> {
        self.raw(key).map(str::to_owned).filter(|s| !s.is_empty())
    }
}

/// `key=value` arguments as a map (keys and values trimmed), the keys `keep` accepts.
fn key_values<'a>(
    args: impl IntoIterator<Item = &'a str>,
    keep: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, String>, Error> {
    let mut map = BTreeMap::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| Error::NotKeyValue(a.to_owned()))?;
        if keep(k.trim()) {
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    Ok(map)
}

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
/// Spark's "never" for second-valued timeouts (Int.MaxValue seconds).
pub const NEVER: Duration = Duration::from_secs(i32::MAX as u64);

impl Config {
    /// Parses `--conf key=value` arguments.
    ///
    /// # Errors
    /// [`Error::NotKeyValue`] or any error of [`Config::from_map`].
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        Self::from_map(&key_values(args, |_| true)?)
    }

    /// Parses the settings of a running Spark driver (from the JVM adapter): as
    /// [`Config::from_args`], but keys under our prefixes that this scheduler does not know
    /// are ignored, since Spark has already accepted them (e.g. executor labels and volumes,
    /// which shaped the executor pod Spark's builder made).
    ///
    /// # Errors
    /// As [`Config::from_args`], for the keys it knows.
    pub fn from_spark_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        let known =
            |k: &str| !OWNED_PREFIXES.iter().any(|p| k.starts_with(p)) || KNOWN.contains(&k);
        Self::from_map(&key_values(args, known)?)
    }

    /// Builds and validates the configuration from a map of Spark keys.
    ///
    /// # Errors
    /// Unknown keys under our prefixes, unparseable or out-of-range values, and the
    /// combinations Spark's `validateSettings` refuses, each naming the key.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self, Error> {
        for key in map.keys() {
            let owned = OWNED_PREFIXES.iter().any(|p| key.starts_with(p));
            if owned && !KNOWN.contains(&key.as_str()) {
                return Err(Error::UnknownKey { key: key.clone() });
            }
        }
        let c = Conf { map };
        let min = c.count("spark.dynamicAllocation.minExecutors", 0)?;
        let max = c.count("spark.dynamicAllocation.maxExecutors", i32::MAX as u32)?;
        if max == 0 {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.maxExecutors",
                "0",
                "cannot be 0",
            ));
        }
        if min > max {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.minExecutors",
                &min.to_string(),
                format!(
                    "must be less than or equal to spark.dynamicAllocation.maxExecutors ({max})"
                ),
            ));
        }
        let initial_conf = c.count("spark.dynamicAllocation.initialExecutors", min)?;
        let instances = c.count("spark.executor.instances", 0)?;
        let initial = min.max(initial_conf).max(instances);
        if initial > max {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.initialExecutors",
                &initial.to_string(),
                format!(
                    "must be less than or equal to spark.dynamicAllocation.maxExecutors ({max})"
                ),
            ));
        }
        let ratio_raw = c.raw("spark.dynamicAllocation.executorAllocationRatio");
        let ratio: f64 = match ratio_raw {
            None => 1.0,
            Some(v) => v.trim().parse().map_err(|_| {
                Conf::invalid(
                    "spark.dynamicAllocation.executorAllocationRatio",
                    v,
                    "expected a number",
                )
            })?,
        };
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.executorAllocationRatio",
                ratio_raw.unwrap_or(""),
                "must be > 0 and <= 1.0",
            ));
        }
        let backlog = c.time("spark.dynamicAllocation.schedulerBacklogTimeout", SEC, SEC)?;
        if backlog.is_zero() {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.schedulerBacklogTimeout",
                "0",
                "must be > 0",
            ));
        }
        let sustained = c.time(
            "spark.dynamicAllocation.sustainedSchedulerBacklogTimeout",
            backlog,
            SEC,
        )?;
        if sustained.is_zero() {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.sustainedSchedulerBacklogTimeout",
                "0",
                "must be > 0",
            ));
        }
        let cores = c.positive("spark.executor.cores", 1)?;
        let task_cpus = c.positive("spark.task.cpus", 1)?;
        let tasks_per_executor = cores / task_cpus;
        if tasks_per_executor == 0 {
            return Err(Conf::invalid(
                "spark.executor.cores",
                &cores.to_string(),
                format!("must not be less than spark.task.cpus ({task_cpus})"),
            ));
        }
        let enabled = c.bool("spark.dynamicAllocation.enabled", false)?;
        let shuffle_service = c.bool("spark.shuffle.service.enabled", false)?;
        let tracking = c.bool("spark.dynamicAllocation.shuffleTracking.enabled", true)?;
        if enabled && !shuffle_service && !tracking {
            return Err(Conf::invalid(
                "spark.dynamicAllocation.shuffleTracking.enabled",
                "false",
                "dynamic allocation requires the external shuffle service (spark.shuffle.service.enabled) or shuffle tracking",
            ));
        }
        let dynamic_allocation = DynamicAllocation {
            enabled,
            min_executors: min,
            max_executors: max,
            initial_executors: initial,
            allocation_ratio: ratio,
            scheduler_backlog_timeout: backlog,
            sustained_scheduler_backlog_timeout: sustained,
            executor_idle_timeout: c.time(
                "spark.dynamicAllocation.executorIdleTimeout",
                60 * SEC,
                SEC,
            )?,
            cached_executor_idle_timeout: c.time(
                "spark.dynamicAllocation.cachedExecutorIdleTimeout",
                NEVER,
                SEC,
            )?,
            shuffle_tracking_enabled: tracking,
            shuffle_tracking_timeout: c.time(
                "spark.dynamicAllocation.shuffleTracking.timeout",
                Duration::MAX,
                MS,
            )?,
            shuffle_service_enabled: shuffle_service,
            shuffle_service_fetch_rdd_enabled: c
                .bool("spark.shuffle.service.fetch.rdd.enabled", false)?,
            tasks_per_executor,
        };
        let batch_delay = c.time("spark.kubernetes.allocation.batch.delay", SEC, MS)?;
        if batch_delay.is_zero() {
            return Err(Conf::invalid(
                "spark.kubernetes.allocation.batch.delay",
                "0",
                "must be a positive time value",
            ));
        }
        let executor_timeout = c.time(
            "spark.kubernetes.allocation.executor.timeout",
            600 * SEC,
            MS,
        )?;
        if executor_timeout.is_zero() {
            return Err(Conf::invalid(
                "spark.kubernetes.allocation.executor.timeout",
                "0",
                "must be a positive time value",
            ));
        }
        let polling = c.time("spark.kubernetes.executor.apiPollingInterval", 30 * SEC, MS)?;
        if polling.is_zero() {
            return Err(Conf::invalid(
                "spark.kubernetes.executor.apiPollingInterval",
                "0",
                "must be a positive time value",
            ));
        }
        let max_failures_default = 3u32.max(max.saturating_mul(2));
        let kubernetes = Kubernetes {
            namespace: c
                .string("spark.kubernetes.namespace")
                .unwrap_or_else(|| "default".into()),
            driver_pod_name: c.string("spark.kubernetes.driver.pod.name"),
            pod_name_prefix: c.string("spark.kubernetes.executor.podNamePrefix"),
            pod_template_file: c.string("spark.kubernetes.executor.podTemplateFile"),
            pod_template_container_name: c
                .string("spark.kubernetes.executor.podTemplateContainerName"),
            container_image: c
                .string("spark.kubernetes.executor.container.image")
                .or_else(|| c.string("spark.kubernetes.container.image")),
            batch_size: c.positive("spark.kubernetes.allocation.batch.size", 10)?,
            batch_delay,
            max_pending_pods: c.positive(
                "spark.kubernetes.allocation.maxPendingPods",
                i32::MAX as u32,
            )?,
            executor_timeout,
            delete_on_termination: c.bool("spark.kubernetes.executor.deleteOnTermination", true)?,
            api_polling_interval: polling,
            delete_grace_period: c.time(
                "spark.kubernetes.dynamicAllocation.deleteGracePeriod",
                5 * SEC,
                MS,
            )?,
            max_executor_failures: c
                .positive("spark.executor.maxNumFailures", max_failures_default)?,
            failures_validity_interval: match c.raw("spark.executor.failuresValidityInterval") {
                None => None,
                Some(_) => Some(c.time(
                    "spark.executor.failuresValidityInterval",
                    Duration::ZERO,
                    MS,
                )?),
            },
            first_executor_id: 1,
        };
        let memory_mib = match c.raw("spark.executor.memory") {
            None => 1024,
            Some(v) => parse_mib(v).filter(|m| *m > 0).ok_or_else(|| {
                Conf::invalid(
                    "spark.executor.memory",
                    v,
                    "expected a size such as 4g or 512m",
                )
            })?,
        };
        let factor_raw = c.raw("spark.executor.memoryOverheadFactor");
        let factor: f64 = match factor_raw {
            None => 0.1,
            Some(v) => v.trim().parse().map_err(|_| {
                Conf::invalid(
                    "spark.executor.memoryOverheadFactor",
                    v,
                    "expected a number",
                )
            })?,
        };
        if !(0.0..1.0).contains(&factor) {
            return Err(Conf::invalid(
                "spark.executor.memoryOverheadFactor",
                factor_raw.unwrap_or(""),
                "must be >= 0 and < 1",
            ));
        }
        let overhead_mib = match c.raw("spark.executor.memoryOverhead") {
            None => ((memory_mib as f64 * factor) as u64).max(384),
            Some(v) => parse_mib(v).ok_or_else(|| {
                Conf::invalid(
                    "spark.executor.memoryOverhead",
                    v,
                    "expected a size such as 512m",
                )
            })?,
        };
        let quantity = |key: &'static str| -> Result<Option<String>, Error> {
            match c.string(key) {
                None => Ok(None),
                Some(v)
                    if v.trim_end_matches('m')
                        .parse::<f64>()
                        .is_ok_and(|x| x > 0.0) =>
                {
                    Ok(Some(v))
                }
                Some(v) => Err(Conf::invalid(
                    key,
                    &v,
                    "expected a CPU quantity such as 0.5 or 500m",
                )),
            }
        };
        let driver_port = c.count("spark.driver.port", 7078)?;
        let driver_port = u16::try_from(driver_port).map_err(|_| {
            Conf::invalid("spark.driver.port", &driver_port.to_string(), "not a port")
        })?;
        let executor = Executor {
            cores,
            memory_mib,
            overhead_mib,
            request_cores: quantity("spark.kubernetes.executor.request.cores")?,
            limit_cores: quantity("spark.kubernetes.executor.limit.cores")?,
            driver_url: c
                .string("spark.driver.host")
                .map(|h| format!("spark://CoarseGrainedScheduler@{h}:{driver_port}")),
        };
        let app_id = c
            .string("spark.app.id")
            .unwrap_or_else(|| "spark-application".into());
        if !app_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            || app_id.len() > 63
        {
            return Err(Conf::invalid(
                "spark.app.id",
                &app_id,
                "must be a valid Kubernetes label value",
            ));
        }
        Ok(Self {
            app_id,
            dynamic_allocation,
            kubernetes,
            executor,
        })
    }
}

#[cfg(test)]
mod tests;

use super::*;

fn conf(pairs: &[&str]) -> Result<Config, Error> {
    Config::from_args(pairs.iter().copied())
}

#[test]
fn defaults_are_sparks() {
    let c = conf(&[]).unwrap();
    let d = &c.dynamic_allocation;
    assert!(!d.enabled);
    assert_eq!(
        (d.min_executors, d.max_executors, d.initial_executors),
        (0, i32::MAX as u32, 0)
    );
    assert_eq!(d.allocation_ratio, 1.0);
    assert_eq!(d.scheduler_backlog_timeout, Duration::from_secs(1));
    assert_eq!(
        d.sustained_scheduler_backlog_timeout,
        Duration::from_secs(1)
    );
    assert_eq!(d.executor_idle_timeout, Duration::from_secs(60));
    assert_eq!(d.cached_executor_idle_timeout, NEVER);
    assert!(d.shuffle_tracking_enabled);
    assert_eq!(d.shuffle_tracking_timeout, Duration::MAX);
    assert_eq!(d.tasks_per_executor, 1);
    let k = &c.kubernetes;
    assert_eq!((k.batch_size, k.batch_delay), (10, Duration::from_secs(1)));
    assert_eq!(k.max_pending_pods, i32::MAX as u32);
    assert_eq!(k.pod_creation_timeout(), Duration::from_secs(600));
    assert!(k.delete_on_termination);
    assert_eq!(k.api_polling_interval, Duration::from_secs(30));
    assert_eq!(k.namespace, "default");
}

#[test]
fn derived_values() {
    let c = conf(&[
        "spark.dynamicAllocation.minExecutors=2",
        "spark.dynamicAllocation.initialExecutors=1",
        "spark.executor.instances=4",
        "spark.dynamicAllocation.maxExecutors=10",
        "spark.executor.cores=4",
        "spark.task.cpus=2",
        "spark.dynamicAllocation.schedulerBacklogTimeout=5",
        "spark.kubernetes.allocation.batch.delay=3s",
        "spark.kubernetes.allocation.executor.timeout=2000",
        "spark.some.other.key=whatever",
    ])
    .unwrap();
    let d = &c.dynamic_allocation;
    // Utils.getDynamicAllocationInitialExecutors: max(min, initial, instances).
    assert_eq!(d.initial_executors, 4);
    assert_eq!(d.tasks_per_executor, 2);
    // Bare numbers take the key's unit; the sustained timeout falls back to the backlog one.
    assert_eq!(
        d.sustained_scheduler_backlog_timeout,
        Duration::from_secs(5)
    );
    // podCreationTimeout = max(5 * batch.delay, executor.timeout).
    assert_eq!(c.kubernetes.pod_creation_timeout(), Duration::from_secs(15));
    assert_eq!(c.kubernetes.max_executor_failures, 20);
}

#[test]
fn bad_values_are_rejected_naming_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["spark.dynamicAllocation.minExecutors=-1"],
            "spark.dynamicAllocation.minExecutors",
        ),
        (
            &["spark.dynamicAllocation.maxExecutors=0"],
            "spark.dynamicAllocation.maxExecutors",
        ),
        (
            &[
                "spark.dynamicAllocation.minExecutors=5",
                "spark.dynamicAllocation.maxExecutors=2",
            ],
            "spark.dynamicAllocation.minExecutors",
        ),
        (
            &["spark.dynamicAllocation.executorAllocationRatio=1.5"],
            "spark.dynamicAllocation.executorAllocationRatio",
        ),
        (
            &["spark.dynamicAllocation.executorAllocationRatio=0"],
            "spark.dynamicAllocation.executorAllocationRatio",
        ),
        (
            &["spark.dynamicAllocation.schedulerBacklogTimeout=0s"],
            "spark.dynamicAllocation.schedulerBacklogTimeout",
        ),
        (
            &["spark.dynamicAllocation.executorIdleTimeout=-5s"],
            "spark.dynamicAllocation.executorIdleTimeout",
        ),
        (
            &["spark.dynamicAllocation.executorIdleTimeout=soon"],
            "spark.dynamicAllocation.executorIdleTimeout",
        ),
        (
            &["spark.dynamicAllocation.enabled=yes"],
            "spark.dynamicAllocation.enabled",
        ),
        (
            &["spark.kubernetes.allocation.batch.size=0"],
            "spark.kubernetes.allocation.batch.size",
        ),
        (
            &["spark.kubernetes.allocation.maxPendingPods=-3"],
            "spark.kubernetes.allocation.maxPendingPods",
        ),
        (
            &["spark.executor.cores=1", "spark.task.cpus=2"],
            "spark.executor.cores",
        ),
        (
            &[
                "spark.dynamicAllocation.enabled=true",
                "spark.dynamicAllocation.shuffleTracking.enabled=false",
            ],
            "spark.dynamicAllocation.shuffleTracking.enabled",
        ),
        (
            &["spark.dynamicAllocation.minExecutor=1"],
            "spark.dynamicAllocation.minExecutor",
        ),
        (
            &["spark.kubernetes.allocation.batchSize=3"],
            "spark.kubernetes.allocation.batchSize",
        ),
        (&["spark.app.id=has space"], "spark.app.id"),
    ];
    for (args, key) in cases {
        let err = conf(args).unwrap_err();
        assert!(err.to_string().contains(key), "{args:?}: {err}");
    }
    assert_eq!(conf(&["novalue"]).unwrap_err().kind(), "not_key_value");
}

#[test]
fn spark_time_strings() {
    let s = Duration::from_secs(1);
    assert_eq!(parse_time("500ms", s), Some(Duration::from_millis(500)));
    assert_eq!(parse_time("2min", s), Some(Duration::from_secs(120)));
    assert_eq!(parse_time("3m", s), Some(Duration::from_secs(180)));
    assert_eq!(parse_time("1h", s), Some(Duration::from_secs(3600)));
    assert_eq!(parse_time("7", s), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_time("7", Duration::from_millis(1)),
        Some(Duration::from_millis(7))
    );
    assert_eq!(parse_time("1.5s", s), None);
    assert_eq!(parse_time("x", s), None);
}

#[test]
fn executor_resources_as_spark_computes_them() {
    let e = conf(&[]).unwrap().executor;
    assert_eq!((e.cores, e.memory_mib, e.overhead_mib), (1, 1024, 384));
    assert_eq!(e.driver_url, None);
    let e = conf(&[
        "spark.executor.memory=8g",
        "spark.executor.cores=4",
        "spark.driver.host=driver-svc.spark.svc",
        "spark.kubernetes.executor.request.cores=3500m",
    ])
    .unwrap()
    .executor;
    // max(0.1 * 8192, 384) = 819.
    assert_eq!((e.cores, e.memory_mib, e.overhead_mib), (4, 8192, 819));
    assert_eq!(
        e.driver_url.as_deref(),
        Some("spark://CoarseGrainedScheduler@driver-svc.spark.svc:7078")
    );
    assert_eq!(e.request_cores.as_deref(), Some("3500m"));
    assert_eq!(
        conf(&["spark.executor.memoryOverhead=1g"])
            .unwrap()
            .executor
            .overhead_mib,
        1024
    );
    for bad in [
        "spark.executor.memory=lots",
        "spark.executor.memory=0",
        "spark.kubernetes.executor.request.cores=-1",
        "spark.driver.port=70000",
    ] {
        let key = bad.split('=').next().unwrap();
        assert!(conf(&[bad]).unwrap_err().to_string().contains(key), "{bad}");
    }
    assert_eq!(parse_mib("2048k"), Some(2));
    assert_eq!(parse_mib("1t"), Some(1 << 20));
}

#[test]
fn a_drivers_conf_may_hold_keys_we_do_not_know_but_known_ones_are_still_checked() {
    let conf = [
        "spark.app.id=a",
        "spark.kubernetes.executor.label.team=data",
        "spark.kubernetes.executor.volumes.hostPath.d.mount.path=/d",
        "spark.dynamicAllocation.newSettingOfSpark5=1",
        "spark.kubernetes.allocation.batch.size=3",
    ];
    assert!(matches!(
        Config::from_args(conf),
        Err(Error::UnknownKey { .. })
    ));
    let c = Config::from_spark_args(conf).unwrap();
    assert_eq!(c.kubernetes.batch_size, 3);
    let bad = Config::from_spark_args(["spark.kubernetes.allocation.batch.size=-3"]);
    assert!(bad.unwrap_err().to_string().contains("batch.size"));
}

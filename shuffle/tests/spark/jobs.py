#!/usr/bin/env python3
"""Real Spark jobs whose shuffle blocks are served by an external shuffle service.

Driven by `shuffle/tests/spark_e2e.rs`; also runnable by hand:

    python jobs.py static --port 7337 --local-dir /allowed/root/spark-local --scratch /tmp/x

Spark runs in `local-cluster[2,1,1024]` (executors are separate JVMs) with
`spark.shuffle.service.enabled=true`, so every remote shuffle read goes to the service on
`--port`. Failures are made visible instead of being retried away (task, stage, fetch and
registration attempts all 1).

Every job returns `got` (what Spark computed) and `expected` (computed here in plain Python,
never by Spark) plus facts the caller asserts on. The script prints exactly ONE JSON line on
stdout (everything else goes to stderr):

    {"session": ..., "spark_version": ..., "app_id": ..., "executors": [...],
     "jobs": {name: {"got": ..., "expected": ..., "seconds": ..., "error": null, ...}},
     "seconds": ..., "phases": {"context_start": ..., "executors_up": ..., "stop": ...}}

(`phases`, the seconds of the static session's other steps, only in that session.)

A job that raises gets `"error": "<message>"` (the full trace is on stderr) and the other
jobs of a static session still run. The process exits 0 whenever it printed the JSON line.

Sessions:
  static        reduceByKey, groupByKey, a 200-partition sort, a DataFrame join + aggregation
                with AQE (batch fetch), and a ~300 MB incompressible shuffle whose blocks exceed
                `spark.network.maxRemoteBlockSizeFetchToMem` (StreamRequest), then a ~147 MB
                one of ~2.3 MB blocks (several bulk streams per reducer at once).
  old-protocol  small RDD jobs with `spark.shuffle.useOldFetchProtocol=true` (OpenBlocks).
  dynamic       dynamic allocation: shuffle map output and DISK_ONLY cached blocks are read
                after every executor that wrote them is gone; accumulators prove that nothing
                was recomputed.
  node          the DaemonSet layout (daemonset/tests/spark_node.rs): Spark's local dir is the
                node's shared root itself and the flags of daemonset/deploy/spark/ come in as
                --conf; map output written by two executors is read back by new executors
                after both left (dynamic allocation), without recomputation.
"""

import argparse
import hashlib
import json
import operator
import os
import signal
import sys
import threading
import time
import traceback
import zlib

# Executors of a dynamic session go away ~7 s after going idle with a 2 s idle timeout.
EXECUTORS_GONE_TIMEOUT_S = 120
EXECUTOR_IDLE_TIMEOUT = "2s"
# A job still running after this long is cancelled and reported as failed (the slowest job
# took ~50 s on a heavily loaded 2-core machine). A shuffle service that refuses
# RegisterExecutor otherwise leaves Spark relaunching executors forever.
JOB_TIMEOUT_S = 180
# Static sessions wait this long for both executors to run a task before any job.
EXECUTORS_UP_TIMEOUT_S = 90
# Blocks above this size are fetched with StreamRequest (to disk) instead of ChunkFetchRequest.
MAX_REMOTE_BLOCK_SIZE_FETCH_TO_MEM = "8m"

LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
"""


def log(*args):
    print("[jobs.py %s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# === environment =================================================================================


def prepare_spark_home(scratch):
    """Point SPARK_HOME at a symlink farm of the pyspark package with its own `conf/` and `work/`.

    local-cluster workers put executor logs under `$SPARK_HOME/work/<app>/<exec>/` and every JVM
    reads `$SPARK_HOME/conf/log4j2.properties`; the farm keeps both inside `scratch` (so nothing
    is written into the cached venv) and sets every JVM's log level to WARN.
    """
    import pyspark

    real = os.path.dirname(os.path.abspath(pyspark.__file__))
    home = os.path.join(scratch, "spark-home")
    os.makedirs(os.path.join(home, "conf"), exist_ok=True)
    os.makedirs(os.path.join(home, "work"), exist_ok=True)
    for name in os.listdir(real):
        link = os.path.join(home, name)
        if name not in ("conf", "work") and not os.path.lexists(link):
            os.symlink(os.path.join(real, name), link)
    with open(os.path.join(home, "conf", "log4j2.properties"), "w") as f:
        f.write(LOG4J2_PROPERTIES)
    os.environ["SPARK_HOME"] = home
    os.environ.pop("SPARK_CONF_DIR", None)
    # Executors connect to the shuffle service on their own advertised host: make that the
    # loopback address the service binds to, whatever the machine's hostname resolves to.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return home


def exit_with_parent():
    """Kill our process group (this script and Spark's JVMs) if our parent dies.

    The test harness starts this script as the leader of a new process group and kills that
    group when it is done, but a harness that is itself killed (a test timeout) cannot.
    """
    parent = os.getppid()
    if os.getpgrp() != os.getpid():
        raise SystemExit("--exit-with-parent needs this process to lead its process group")

    def watch():
        while True:
            time.sleep(1)
            if os.getppid() != parent:
                log("parent process %d is gone: killing process group %d" % (parent, os.getpgrp()))
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def base_conf(args, app_name):
    from pyspark import SparkConf

    return (
        SparkConf()
        .setMaster("local-cluster[2,1,1024]")
        .setAppName(app_name)
        .set("spark.shuffle.service.enabled", "true")
        .set("spark.shuffle.service.port", str(args.port))
        .set("spark.local.dir", args.local_dir)
        # Make every mistake fatal instead of silently retried.
        .set("spark.task.maxFailures", "1")
        .set("spark.stage.maxConsecutiveAttempts", "1")
        .set("spark.shuffle.io.maxRetries", "0")
        .set("spark.shuffle.registration.maxAttempts", "1")
        .set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false")
        .set("spark.driver.memory", "1g")
        .set("spark.executor.memory", "1g")
        # A service that stops answering fails the fetch after 60 s instead of 120 s.
        .set("spark.shuffle.io.connectionTimeout", "60s")
        .setAll(kv.split("=", 1) for kv in args.conf)
    )


# === helpers =====================================================================================


def executor_id():
    """The id of the executor running the calling Python worker.

    local-cluster workers start each executor in `$SPARK_HOME/work/<app-id>/<executor-id>`, and
    the Python workers inherit that working directory.
    """
    cwd = os.getcwd()
    exec_id = os.path.basename(cwd)
    app = os.path.basename(os.path.dirname(cwd))
    return exec_id if app.startswith("app-") else "unknown(cwd=%s)" % cwd


def set_accumulator(sc):
    from pyspark.accumulators import AccumulatorParam

    class SetParam(AccumulatorParam):
        def zero(self, value):
            return set()

        def addInPlace(self, a, b):
            a |= b
            return a

    return sc.accumulator(set(), SetParam())


def str_keys(d):
    return {str(k): v for k, v in d.items()}


def executor_timeline(sc):
    """Every executor the driver has seen (the driver excluded), from Spark's status store."""
    summaries = sc._jsc.sc().statusStore().executorList(False)
    out = []
    for i in range(summaries.size()):
        e = summaries.apply(i)
        if e.id() == "driver":
            continue
        removed = e.removeTime()
        out.append(
            {
                "id": e.id(),
                "active": bool(e.isActive()),
                "added_ms": e.addTime().getTime(),
                "removed_ms": removed.get().getTime() if removed.isDefined() else None,
                "total_tasks": e.totalTasks(),
            }
        )
    return sorted(out, key=lambda e: int(e["id"]) if e["id"].isdigit() else e["id"])


def live_executor_ids(sc):
    ids = sc._jsc.sc().getExecutorIds()
    return sorted(ids.apply(i) for i in range(ids.size()))


def block_managers(sc):
    """Number of registered block managers, the driver's included."""
    return sc._jsc.sc().getExecutorMemoryStatus().size()


def wait_until_no_executors(sc, timeout_s):
    """Poll until the scheduler has no executor and only the driver's block manager is left."""
    start = time.time()
    while True:
        ids = live_executor_ids(sc)
        bms = block_managers(sc)
        if not ids and bms == 1:
            return time.time() - start
        if time.time() - start > timeout_s:
            raise TimeoutError(
                "executors still alive after %ds: ids=%s block managers=%d" % (timeout_s, ids, bms)
            )
        time.sleep(0.25)


def warm_up(sc, n, timeout_s):
    """Wait until `n` executors can run tasks, or raise after `timeout_s`.

    An executor whose RegisterExecutor the shuffle service refuses registers with the driver
    first and exits right after, and Spark then relaunches executors forever; counting live
    executors is not enough, a task must run.
    """
    start = time.time()

    def one_task_each():
        ran_on = sc.parallelize(range(n), n).map(lambda _: executor_id()).collect()
        return {"ran_on": sorted(set(ran_on))}

    out = run_job({}, "warm-up", one_task_each, timeout_s=timeout_s)
    if out["error"]:
        raise RuntimeError(
            "no task could run within %ds (executors failing at start? is RegisterExecutor "
            "refused by the shuffle service?): %s" % (timeout_s, out["error"][:500])
        )
    while len(live_executor_ids(sc)) < n:
        if time.time() - start > timeout_s:
            raise TimeoutError(
                "only %s of %d executors up after %ds" % (live_executor_ids(sc), n, timeout_s)
            )
        time.sleep(0.25)
    took = time.time() - start
    log("%d executors up after %.1fs" % (n, took))
    return took


def now_ms():
    return int(time.time() * 1000)


# The SparkContext of the session, for the job watchdog.
CONTEXT = None


def run_job(results, name, fn, *args, timeout_s=JOB_TIMEOUT_S):
    """Runs one job, recording its result or error and its duration; cancels it (and reports
    it as failed, with `timed_out`) after `timeout_s`."""
    log("job %s: start" % name)
    start = time.time()
    timed_out = threading.Event()

    def cancel():
        timed_out.set()
        log("job %s: still running after %ds, cancelling" % (name, timeout_s))
        CONTEXT.cancelAllJobs()

    watchdog = threading.Timer(timeout_s, cancel)
    watchdog.daemon = True
    watchdog.start()
    try:
        out = fn(*args)
        out.setdefault("error", None)
    except Exception as e:  # noqa: BLE001 - reported to the caller as this job's error
        traceback.print_exc(file=sys.stderr)
        out = {"error": "%s: %s" % (type(e).__name__, str(e)[:4000])}
    finally:
        watchdog.cancel()
    out["timed_out"] = timed_out.is_set()
    if timed_out.is_set():
        out["error"] = "timed out after %ds (cancelled): %s" % (timeout_s, out["error"])
    out["seconds"] = round(time.time() - start, 2)
    log("job %s: %s in %.1fs" % (name, "FAILED" if out["error"] else "ok", out["seconds"]))
    results[name] = out
    return out


def run_jobs(results, jobs, only=None):
    """Runs (name, fn, *args) jobs in order, all of them or the comma-separated `only`.
    A failed job does not stop the others; a timed-out one does (the cluster is stuck)."""
    wanted = set(only.split(",")) if only else None
    for name, fn, *args in jobs:
        if wanted is None or name in wanted:
            if run_job(results, name, fn, *args)["timed_out"]:
                log("job %s timed out: skipping the remaining jobs" % name)
                return


# === RDD jobs ====================================================================================


def job_reduce_by_key(sc, n, map_parts, reduce_parts):
    pairs = sc.parallelize(range(n), map_parts).map(lambda i: (i % 997, (i * i) % 10007))
    got = dict(pairs.reduceByKey(operator.add, reduce_parts).collect())
    expected = {}
    for i in range(n):
        expected[i % 997] = expected.get(i % 997, 0) + (i * i) % 10007
    return {"got": str_keys(got), "expected": str_keys(expected)}


def job_group_by_key(sc, n, map_parts, reduce_parts):
    pairs = sc.parallelize(range(n), map_parts).map(lambda i: (i % 499, i * 3 + 1))
    grouped = pairs.groupByKey(reduce_parts).mapValues(lambda vs: sorted(vs)).collect()
    got = dict(grouped)
    expected = {}
    for i in range(n):
        expected.setdefault(i % 499, []).append(i * 3 + 1)
    return {"got": str_keys(got), "expected": str_keys(expected)}


def sort_key(i):
    # A permutation of range(n) for n < 1_000_003 (7919 is invertible modulo the prime).
    return (i * 7919 + 13) % 1_000_003


def ordering_digest(pairs):
    h = hashlib.sha256()
    for k, v in pairs:
        h.update(b"%d:%s\n" % (k, v.encode()))
    return {
        "count": len(pairs),
        "first": list(pairs[0]) if pairs else None,
        "last": list(pairs[-1]) if pairs else None,
        "sha256": h.hexdigest(),
    }


def job_sort(sc, n, map_parts, reduce_parts):
    """sortByKey into `reduce_parts` range partitions: map_parts x reduce_parts small blocks."""
    pairs = sc.parallelize(range(n), map_parts).map(lambda i: (sort_key(i), "v%d" % i))
    ordered = pairs.sortByKey(ascending=True, numPartitions=reduce_parts)
    got = ordering_digest(ordered.collect())
    got["partitions"] = ordered.getNumPartitions()
    expected = ordering_digest(sorted((sort_key(i), "v%d" % i) for i in range(n)))
    expected["partitions"] = reduce_parts
    return {"got": got, "expected": expected}


# === SQL jobs ====================================================================================


def job_sql_join_agg(spark):
    """Sort-merge join + aggregation with AQE coalescing: reducers read contiguous partition
    ranges, so Spark sends FetchShuffleBlocks with batchFetchEnabled=true."""
    from pyspark.sql import functions as F

    spark.conf.set("spark.sql.adaptive.enabled", "true")
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "true")
    spark.conf.set("spark.sql.adaptive.fetchShuffleBlocksInBatch", "true")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")  # force a shuffled join
    spark.conf.set("spark.sql.shuffle.partitions", "200")
    n_orders, n_customers = 300_000, 900
    orders = spark.range(0, n_orders, 1, 6).select(
        F.col("id").alias("order_id"),
        (F.col("id") % 1000).alias("cust"),
        ((F.col("id") * 37) % 101).alias("amount"),
    )
    customers = spark.range(0, n_customers, 1, 3).select(
        F.col("id").alias("cust"),
        F.concat(F.lit("r"), (F.col("id") % 7).cast("string")).alias("region"),
    )
    result = (
        orders.join(customers, "cust")
        .groupBy("region")
        .agg(
            F.count(F.lit(1)).alias("orders"),
            F.sum("amount").alias("amount"),
            F.countDistinct("cust").alias("customers"),
            F.max("order_id").alias("max_order"),
        )
    )
    rows = result.collect()
    plan = result._jdf.queryExecution().executedPlan().toString()
    got = {r["region"]: [r["orders"], r["amount"], r["customers"], r["max_order"]] for r in rows}

    acc = {}
    for i in range(n_orders):
        cust = i % 1000
        if cust >= n_customers:  # inner join: orders of unknown customers drop out
            continue
        region = "r%d" % (cust % 7)
        a = acc.setdefault(region, [0, 0, set(), -1])
        a[0] += 1
        a[1] += (i * 37) % 101
        a[2].add(cust)
        a[3] = max(a[3], i)
    expected = {r: [a[0], a[1], len(a[2]), a[3]] for r, a in acc.items()}
    return {
        "got": got,
        "expected": expected,
        "aqe_coalesced": "coalesced" in plan,
        "plan": plan[:3000],
    }


LARGE_ROWS = 72_000
LARGE_DIGESTS_PER_ROW = 64  # 64 x 64-byte SHA-512 digests: 4 KiB incompressible payload per row


def large_expected(rows):
    sha512, crc32 = hashlib.sha512, zlib.crc32
    suffixes = [b"-%d" % k for k in range(LARGE_DIGESTS_PER_ROW)]
    crc_sum = 0
    for i in range(rows):
        prefix = b"%d" % i
        crc_sum += crc32(b"".join([sha512(prefix + k).digest() for k in suffixes]))
    return {
        "rows": rows,
        "sum_id": rows * (rows - 1) // 2,
        "payload_bytes": rows * LARGE_DIGESTS_PER_ROW * 64,
        "sum_crc32": crc_sum,
    }


def job_large_blocks(spark):
    """~295 MB of incompressible rows through a 4 x 4 shuffle: ~18 MB blocks, above
    spark.network.maxRemoteBlockSizeFetchToMem, so remote ones come via StreamRequest."""
    return payload_shuffle(spark, LARGE_ROWS, 4, 4)


def job_medium_blocks(spark):
    """~147 MB of incompressible rows through a 16 x 4 shuffle: ~2.3 MB blocks. A reducer
    asks for its ~18 MB of remote blocks in three FetchShuffleBlocks sent at once (Spark
    closes a request at maxSizeInFlight / 5 = 4.8 MB; each stays under
    maxRemoteBlockSizeFetchToMem, so its blocks come as chunks): streams of bulk chunks
    share the executor's connection and the daemon serves them by turns (chunk replies out
    of request order, which Spark's client must accept)."""
    return payload_shuffle(spark, LARGE_ROWS // 2, 16, 4)


def payload_shuffle(spark, n_rows, maps, reducers):
    """`n_rows` rows of id and a 4 KiB incompressible payload, from `maps` partitions
    repartitioned by id into `reducers`, aggregated, against the same figures computed here."""
    from pyspark.sql import functions as F

    # The expected figures take seconds of Python: computed while Spark runs the job (the
    # driver's main thread waits on the JVM meanwhile, without the GIL).
    expected = {}
    worker = threading.Thread(target=lambda: expected.update(large_expected(n_rows)), daemon=True)
    worker.start()
    # Plain shuffle: keep AQE (and its batch fetch) out of this job.
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        id_str = F.col("id").cast("string")
        payload = F.concat(
            *[
                F.unhex(F.sha2(F.concat(id_str, F.lit("-%d" % k)), 512))
                for k in range(LARGE_DIGESTS_PER_ROW)
            ]
        )
        rows = spark.range(0, n_rows, 1, maps).select("id", payload.alias("payload"))
        row = (
            rows.repartition(reducers, "id")
            .agg(
                F.count(F.lit(1)).alias("rows"),
                F.sum("id").alias("sum_id"),
                F.sum(F.length("payload")).alias("payload_bytes"),
                F.sum(F.crc32("payload")).alias("sum_crc32"),
            )
            .collect()[0]
        )
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", "true")
    got = {k: row[k] for k in ("rows", "sum_id", "payload_bytes", "sum_crc32")}
    worker.join()
    return {"got": got, "expected": expected}


# === sessions ====================================================================================


def session_static(args, out):
    from pyspark.sql import SparkSession

    conf = (
        base_conf(args, "kshuffle-e2e-static")
        .set("spark.network.maxRemoteBlockSizeFetchToMem", MAX_REMOTE_BLOCK_SIZE_FETCH_TO_MEM)
        # Remote requests of at most 4.8 MB (a fifth of it): see job_medium_blocks.
        .set("spark.reducer.maxSizeInFlight", "24m")
    )
    # Where a session's time goes besides its jobs (the benchmark runner prints these).
    phases = out.setdefault("phases", {})
    start = time.time()
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    sc = spark.sparkContext
    phases["context_start"] = round(time.time() - start, 2)
    describe(sc, out)
    jobs = out["jobs"]
    try:
        phases["executors_up"] = round(warm_up(sc, 2, EXECUTORS_UP_TIMEOUT_S), 2)
        run_jobs(
            jobs,
            [
                ("reduce_by_key", job_reduce_by_key, sc, 200_000, 8, 6),
                ("group_by_key", job_group_by_key, sc, 60_000, 8, 5),
                ("sort_200", job_sort, sc, 100_000, 8, 200),
                ("sql_join_agg", job_sql_join_agg, spark),
                ("large_blocks", job_large_blocks, spark),
                ("medium_blocks", job_medium_blocks, spark),
            ],
            args.jobs,
        )
        out["executors"] = executor_timeline(sc)
    finally:
        start = time.time()
        spark.stop()
        phases["stop"] = round(time.time() - start, 2)


def session_old_protocol(args, out):
    from pyspark import SparkContext

    conf = base_conf(args, "kshuffle-e2e-old-protocol").set(
        "spark.shuffle.useOldFetchProtocol", "true"
    )
    sc = SparkContext(conf=conf)
    describe(sc, out)
    try:
        warm_up(sc, 2, EXECUTORS_UP_TIMEOUT_S)
        run_jobs(
            out["jobs"],
            [
                ("old_protocol_reduce_by_key", job_reduce_by_key, sc, 50_000, 4, 4),
                ("old_protocol_sort", job_sort, sc, 50_000, 4, 20),
            ],
            args.jobs,
        )
        out["executors"] = executor_timeline(sc)
    finally:
        sc.stop()


def session_dynamic(args, out):
    """Phase A writes shuffle output and DISK_ONLY blocks; then every executor is released;
    phase B reads both on new executors through the shuffle service."""
    from pyspark import SparkContext, StorageLevel

    conf = (
        base_conf(args, "kshuffle-e2e-dynamic")
        .set("spark.dynamicAllocation.enabled", "true")
        .set("spark.dynamicAllocation.minExecutors", "0")
        .set("spark.dynamicAllocation.initialExecutors", "0")
        .set("spark.dynamicAllocation.maxExecutors", "2")
        .set("spark.dynamicAllocation.executorIdleTimeout", EXECUTOR_IDLE_TIMEOUT)
        .set("spark.dynamicAllocation.schedulerBacklogTimeout", "1s")
        .set("spark.dynamicAllocation.shuffleTracking.enabled", "false")
        # Cached DISK_ONLY blocks of dead executors are served by the service ...
        .set("spark.shuffle.service.fetch.rdd.enabled", "true")
        # ... and not read straight from the dead executor's dirs by same-host readers.
        .set("spark.storage.localDiskByExecutors.cacheSize", "0")
    )
    sc = SparkContext(conf=conf)
    describe(sc, out)
    jobs = out["jobs"]
    try:
        n5, n6 = 200_000, 100_000
        map_records = sc.accumulator(0)
        cache_records = sc.accumulator(0)
        phase_a_execs = set_accumulator(sc)
        phase_b_execs = set_accumulator(sc)

        def count_map(i):
            map_records.add(1)
            phase_a_execs.add({executor_id()})
            return (i % 101, i)

        def count_cache(i):
            cache_records.add(1)
            phase_a_execs.add({executor_id()})
            return (i, (i * i) % 1_000_003)

        def tag_phase_b(it):
            phase_b_execs.add({executor_id()})
            return it

        shuffled = sc.parallelize(range(n5), 4).map(count_map).reduceByKey(operator.add, 4)
        cached = sc.parallelize(range(n6), 4).map(count_cache).persist(StorageLevel.DISK_ONLY)

        # --- phase A: map output and cached blocks are written by the first executors.
        def phase_a_shuffle():
            return {"keys": shuffled.count(), "map_records": map_records.value}

        def phase_a_cache():
            return {"rows": cached.count(), "cache_records": cache_records.value}

        if run_job(jobs, "dyn_phase_a_shuffle", phase_a_shuffle)["error"]:
            return
        if run_job(jobs, "dyn_phase_a_cache", phase_a_cache)["error"]:
            return
        out["phase_a_executors_live"] = live_executor_ids(sc)

        # --- every executor goes away (idle timeout); nothing tells the service.
        waited = time.time()
        try:
            wait_until_no_executors(sc, EXECUTORS_GONE_TIMEOUT_S)
            out["executors_gone_error"] = None
        except TimeoutError as e:
            out["executors_gone_error"] = str(e)
            return
        out["executors_gone_after_s"] = round(time.time() - waited, 2)
        out["phase_b_start_ms"] = now_ms()
        out["executors_at_phase_b_start"] = executor_timeline(sc)

        # --- phase B: new executors read both through the service only.
        def phase_b_shuffle():
            got = dict(shuffled.mapPartitions(tag_phase_b).collect())
            expected = {}
            for i in range(n5):
                expected[i % 101] = expected.get(i % 101, 0) + i
            return {
                "got": str_keys(got),
                "expected": str_keys(expected),
                "map_records": map_records.value,
                "map_records_expected": n5,
            }

        def phase_b_cache():
            rows = cached.mapPartitions(tag_phase_b).collect()
            got = {
                "rows": len(rows),
                "sum_i": sum(r[0] for r in rows),
                "sum_sq": sum(r[1] for r in rows),
                "distinct_i": len(set(r[0] for r in rows)),
            }
            expected = {
                "rows": n6,
                "sum_i": n6 * (n6 - 1) // 2,
                "sum_sq": sum((i * i) % 1_000_003 for i in range(n6)),
                "distinct_i": n6,
            }
            return {
                "got": got,
                "expected": expected,
                "cache_records": cache_records.value,
                "cache_records_expected": n6,
            }

        if not run_job(jobs, "dynamic_shuffle", phase_b_shuffle)["error"]:
            run_job(jobs, "dynamic_disk_only_rdd", phase_b_cache)
        out["phase_a_executors"] = sorted(phase_a_execs.value)
        out["phase_b_executors"] = sorted(phase_b_execs.value)
        time.sleep(1)  # let the listener bus deliver the last executor events
        out["executors"] = executor_timeline(sc)
    finally:
        sc.stop()


def session_node(args, out):
    """Two executors write map output into one shared root; both are released (idle
    timeout); new executors read it back. The DaemonSet's flags (dynamic allocation, shuffle
    tracking off, host-local reads, ...) come from the caller as --conf."""
    from pyspark import SparkContext

    conf = (
        base_conf(args, "kshuffle-node")
        .set("spark.dynamicAllocation.minExecutors", "0")
        .set("spark.dynamicAllocation.initialExecutors", "2")
        .set("spark.dynamicAllocation.maxExecutors", "2")
        .set("spark.dynamicAllocation.executorIdleTimeout", EXECUTOR_IDLE_TIMEOUT)
        .set("spark.dynamicAllocation.schedulerBacklogTimeout", "1s")
    )
    sc = SparkContext(conf=conf)
    describe(sc, out)
    jobs = out["jobs"]
    try:
        n = 120_000
        map_records = sc.accumulator(0)
        writers = set_accumulator(sc)
        readers = set_accumulator(sc)

        def count_map(i):
            map_records.add(1)
            writers.add({executor_id()})
            return (i % 211, i)

        def tag_reader(it):
            readers.add({executor_id()})
            return it

        shuffled = sc.parallelize(range(n), 6).map(count_map).reduceByKey(operator.add, 4)
        expected = {}
        for i in range(n):
            expected[i % 211] = expected.get(i % 211, 0) + i

        def write_and_read():
            got = dict(shuffled.collect())
            return {"got": str_keys(got), "expected": str_keys(expected)}

        warm_up(sc, 2, EXECUTORS_UP_TIMEOUT_S)
        if run_job(jobs, "node_write", write_and_read)["error"]:
            return
        out["writers"] = sorted(writers.value)
        try:
            wait_until_no_executors(sc, EXECUTORS_GONE_TIMEOUT_S)
            out["executors_gone_error"] = None
        except TimeoutError as e:
            out["executors_gone_error"] = str(e)
            return

        def read_after_writers_left():
            got = dict(shuffled.mapPartitions(tag_reader).collect())
            return {
                "got": str_keys(got),
                "expected": str_keys(expected),
                "map_records": map_records.value,
                "map_records_expected": n,
            }

        run_job(jobs, "node_read_after_release", read_after_writers_left)
        out["readers"] = sorted(readers.value)
        time.sleep(1)  # let the listener bus deliver the last executor events
        out["executors"] = executor_timeline(sc)
    finally:
        sc.stop()


def describe(sc, out):
    global CONTEXT
    CONTEXT = sc
    out["spark_version"] = sc.version
    out["app_id"] = sc.applicationId
    log("Spark %s, application %s" % (sc.version, sc.applicationId))


SESSIONS = {
    "static": session_static,
    "old-protocol": session_old_protocol,
    "dynamic": session_dynamic,
    "node": session_node,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("session", choices=sorted(SESSIONS))
    ap.add_argument("--port", type=int, required=True, help="shuffle service port")
    ap.add_argument("--local-dir", required=True, help="spark.local.dir (under the allowed root)")
    ap.add_argument("--scratch", required=True, help="directory for SPARK_HOME farm and logs")
    ap.add_argument(
        "--jobs",
        help="comma-separated subset of the jobs of a static or old-protocol session",
    )
    ap.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, e.g. spark.eventLog.enabled=true (for investigations)",
    )
    ap.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="kill this process group (Spark included) when the parent process dies",
    )
    args = ap.parse_args()
    if args.exit_with_parent:
        exit_with_parent()

    os.makedirs(args.local_dir, exist_ok=True)
    os.makedirs(args.scratch, exist_ok=True)
    prepare_spark_home(args.scratch)
    out = {"session": args.session, "port": args.port, "jobs": {}, "executors": []}
    start = time.time()
    try:
        SESSIONS[args.session](args, out)
    except Exception as e:  # noqa: BLE001 - reported in the JSON line
        traceback.print_exc(file=sys.stderr)
        out["fatal"] = "%s: %s" % (type(e).__name__, str(e)[:4000])
    out["seconds"] = round(time.time() - start, 2)
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

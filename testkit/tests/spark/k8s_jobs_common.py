"""Helpers shared by the Spark job scripts run on the simulated cluster (`spark-submit
--master k8s://...` against testkit's fake API server and process kubelet):
`testkit/tests/spark/k8s_client.py`, `daemonset/tests/spark/k8s_*.py` and
`sidecar/tests/spark/k8s_sidecar.py`.

A script of this directory imports it as is (its own directory is `sys.path[0]`); a script
elsewhere puts this directory on `sys.path` first, relative to its own file, which works in
client mode and in cluster mode (the kubelet runs the driver on this machine's files, so
`__file__` is the script's real path):

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "../../../testkit/tests/spark"))
    import k8s_jobs_common as common  # noqa: E402

Everything here runs in the driver's Python process only. The map function that
`MapThenReduce` ships to the executors is a closure over local variables, so cloudpickle
sends it by value: the executors never import this module.
"""

import json
import operator
import os
import signal
import sys
import threading
import time


def log(msg):
    """A line on stderr, prefixed with the script's name and the time."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "k8s job"
    print("[%s %s] %s" % (name, time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def exit_with(pid):
    """Kills this process group (this script, and spark-submit's JVM when it leads the group)
    once the test process `pid` is gone, so nothing outlives a killed test."""

    def watch():
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log("test process %d is gone: killing process group %d" % (pid, os.getpgrp()))
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-test", daemon=True).start()


def spark_session():
    """The SparkSession (as spark-submit configured it), and the start of the script's JSON
    result: `{"app_id": ..., "spark_version": ...}`."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    log("SparkContext up: %s" % sc.applicationId)
    return spark, {"app_id": sc.applicationId, "spark_version": spark.version}


def executors(sc):
    """The hosts of every live executor, the driver excluded, sorted (on the simulated
    cluster an executor's host is its pod's IP, or its node's with hostNetwork)."""
    driver = sc.getConf().get("spark.driver.host")
    return sorted(
        e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos() if e.host() != driver
    )


def wait_until(pred, timeout_s, interval_s=0.2):
    """Polls `pred` every `interval_s` until it is true or `timeout_s` have passed; returns
    its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = pred()
        if ok or time.monotonic() > deadline:
            return ok
        time.sleep(interval_s)


def wait_for(what, pred, timeout_s, interval_s=0.2):
    """`wait_until`, raising RuntimeError("timed out waiting for <what>") on time-out."""
    if not wait_until(pred, timeout_s, interval_s):
        raise RuntimeError("timed out waiting for " + what)


def write_json(path, payload, newline=False):
    """Writes `payload` as JSON to `path` atomically (a temporary file renamed), so a test
    polling for the file never reads half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
        if newline:
            f.write("\n")
    os.rename(tmp, path)


class MapThenReduce:
    """One shuffle read in two phases, to prove that the later reduce reads the earlier map
    output instead of recomputing it.

    `map_stage` runs `n` records through `maps` map tasks (an accumulator counts each record
    the map function sees) into `reduces` partitions; `reduce_stage` later sums the values
    per key with the same partitioner, so no new shuffle is needed: its `reduces` reduce tasks
    read the map stage's output. If Spark re-ran the map stage (its output lost), the
    accumulator would count every record twice.
    """

    def __init__(self, sc, n=200_000, keys=101, maps=6, reduces=4):
        self.sc = sc
        self.n = n
        self.keys = keys
        self.map_records = sc.accumulator(0)
        # Locals only in the closure: cloudpickle ships it by value (see the module doc).
        map_records = self.map_records

        def count_map(i):
            map_records.add(1)
            return (i % keys, i)

        self.pairs = sc.parallelize(range(n), maps).map(count_map).partitionBy(reduces)

    def map_stage(self, out):
        """Runs the map stage; sets `phase_a_count`, `map_records_a` and `phase_a_hosts`
        (the executors alive when it ended) in `out`."""
        out["phase_a_count"] = self.pairs.count()
        out["map_records_a"] = self.map_records.value
        out["phase_a_hosts"] = executors(self.sc)
        log("phase A done on %s" % out["phase_a_hosts"])

    def reduce_stage(self, out):
        """Runs the reduce; sets `phase_b_correct` (the sums equal plain Python's),
        `map_records_b` (equal to `map_records_a` when no map task re-ran) and
        `phase_b_hosts` in `out`."""
        got = dict(self.pairs.reduceByKey(operator.add).collect())
        expected = {}
        for i in range(self.n):
            expected[i % self.keys] = expected.get(i % self.keys, 0) + i
        out["phase_b_correct"] = got == expected
        out["map_records_b"] = self.map_records.value
        out["phase_b_hosts"] = executors(self.sc)
        log("phase B done on %s" % out["phase_b_hosts"])

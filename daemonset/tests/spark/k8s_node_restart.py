#!/usr/bin/env python3
"""A node daemon killed between the map and the reduce stage of a job, run by
`spark-submit --master k8s://...` in client mode against testkit's fake API server and process
kubelet (driven by `daemonset/tests/k8s_node_restart.rs`).

Phase A: two executors (dynamic allocation) write the map output of a shuffle into their
nodes' hostPath; then every executor goes idle and Spark deletes its pod, so the only copy of
the output is behind the node daemons. The script writes `phase_a.json` (the executors' hosts)
into `--signal-dir` and waits for the file `go`: meanwhile the test kills the daemons of the
nodes holding the output and waits until they are back. Phase B: new executors read the map
output through the restarted daemons. An accumulator counts map-side records: if phase B re-ran
the map stage it would double.

Prints exactly one JSON line on stdout. The whole process group is killed if the test process
`--test-pid` goes away.
"""

import argparse
import json
import operator
import os
import signal
import sys
import threading
import time

WAIT_S = 90
N = 200_000


def log(msg):
    print("[k8s_node_restart.py %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def exit_with(pid):
    def watch():
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-test", daemon=True).start()


def executors(sc):
    """The hosts of every live executor, the driver excluded."""
    driver = sc.getConf().get("spark.driver.host")
    return sorted(
        e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos() if e.host() != driver
    )


def wait_for(what, pred):
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-pid", type=int, required=True)
    ap.add_argument("--signal-dir", required=True)
    args = ap.parse_args()
    exit_with(args.test_pid)

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    out = {"app_id": sc.applicationId, "spark_version": spark.version}
    log("SparkContext up: %s" % sc.applicationId)
    try:
        map_records = sc.accumulator(0)

        def count_map(i):
            map_records.add(1)
            return (i % 101, i)

        # Both executors (spark.dynamicAllocation.initialExecutors=2) before the map stage, so
        # that both nodes hold map output.
        wait_for("2 executors", lambda: len(executors(sc)) >= 2)
        pairs = sc.parallelize(range(N), 6).map(count_map).partitionBy(4)
        out["phase_a_count"] = pairs.count()
        out["map_records_a"] = map_records.value
        out["phase_a_hosts"] = executors(sc)
        log("phase A done on %s" % out["phase_a_hosts"])

        wait_for("every executor to go", lambda: not executors(sc))
        log("executors gone")
        with open(os.path.join(args.signal_dir, "phase_a.json.tmp"), "w") as f:
            json.dump(out, f)
        os.rename(
            os.path.join(args.signal_dir, "phase_a.json.tmp"),
            os.path.join(args.signal_dir, "phase_a.json"),
        )
        wait_for("the test's go", lambda: os.path.exists(os.path.join(args.signal_dir, "go")))
        log("go: phase B")

        got = dict(pairs.reduceByKey(operator.add).collect())
        expected = {}
        for i in range(N):
            expected[i % 101] = expected.get(i % 101, 0) + i
        out["phase_b_correct"] = got == expected
        out["map_records_b"] = map_records.value
        out["phase_b_hosts"] = executors(sc)
        log("phase B done on %s" % out["phase_b_hosts"])
    finally:
        spark.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sidecar mode with dynamic allocation, run by `spark-submit --master k8s://...` in client
mode against testkit's fake API server and process kubelet (driven by
`sidecar/tests/k8s_sidecar_spark.rs`).

Phase A: executors are requested (dynamic allocation from 0) and a map stage writes shuffle
output into their pods' emptyDir local dirs; the job then waits until every executor is gone
(idle timeout: Spark deletes their pods) and writes `phase_a.json`, then waits for the test's
`go_b` (the test reads the sidecars' counters meanwhile). Phase B: new executors read phase
A's shuffle output from the sidecars of the deleted pods; `phase_b.json`, then `go_end`.
Accumulators count the map-side records: if phase B re-ran the map stage they would double.

Prints exactly one JSON line on stdout, also written to `result.json`. The control files
live in `--dir` (the driver runs in a pod's directory in cluster mode). The whole process
group is killed if the test process `--test-pid` goes away.
"""

import argparse
import json
import operator
import os
import signal
import sys
import threading
import time

EXECUTORS_GONE_TIMEOUT_S = 90
TEST_TIMEOUT_S = 120
N = 200_000


def log(msg):
    print("[k8s_sidecar.py %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


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
    """The host of every live executor, the driver excluded."""
    driver = sc.getConf().get("spark.driver.host")
    return sorted(
        e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos() if e.host() != driver
    )


def write(name, payload):
    """Writes the JSON file `name` atomically."""
    with open(name + ".tmp", "w") as f:
        json.dump(payload, f)
    os.rename(name + ".tmp", name)


def handshake(name, payload, wait_for):
    """Writes `name` and waits for the test to create `wait_for`."""
    write(name, payload)
    deadline = time.monotonic() + TEST_TIMEOUT_S
    while not os.path.exists(wait_for):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never wrote %s" % wait_for)
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-pid", type=int, required=True)
    ap.add_argument("--dir", default=".", help="where the control files are")
    args = ap.parse_args()
    exit_with(args.test_pid)
    os.chdir(args.dir)

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

        pairs = sc.parallelize(range(N), 6).map(count_map).partitionBy(4)
        out["phase_a_count"] = pairs.count()
        out["map_records_a"] = map_records.value
        out["phase_a_hosts"] = executors(sc)
        log("phase A done on %s" % out["phase_a_hosts"])

        deadline = time.monotonic() + EXECUTORS_GONE_TIMEOUT_S
        while executors(sc) and time.monotonic() < deadline:
            time.sleep(0.2)
        out["executors_gone"] = not executors(sc)
        log("executors gone: %s" % out["executors_gone"])
        handshake("phase_a.json", out, "go_b")

        # Same partitioner: no new shuffle; 4 reduce tasks read the 6 map outputs of phase A.
        got = dict(pairs.reduceByKey(operator.add).collect())
        expected = {}
        for i in range(N):
            expected[i % 101] = expected.get(i % 101, 0) + i
        out["phase_b_correct"] = got == expected
        out["map_records_b"] = map_records.value
        out["phase_b_hosts"] = executors(sc)
        log("phase B done on %s" % out["phase_b_hosts"])
        handshake("phase_b.json", out, "go_end")
    finally:
        spark.stop()
    write("result.json", out)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

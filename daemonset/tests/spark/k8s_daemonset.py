#!/usr/bin/env python3
"""DaemonSet mode with dynamic allocation, run by `spark-submit --master k8s://...` in client
mode against testkit's fake API server and process kubelet (driven by
`daemonset/tests/spark_k8s_daemonset.rs`).

Phase A: executors are requested (dynamic allocation from 0), a map stage writes shuffle
output into the node's hostPath; then the test waits until every executor is gone (idle
timeout: Spark deletes their pods). Phase B: new executors are requested and a reduce reads
phase A's shuffle output through the node daemons (their /metrics counters of block fetches
and local-dirs requests are read before and after it). Accumulators count the map-side records:
if phase B re-ran the map stage they would double.

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

EXECUTORS_GONE_TIMEOUT_S = 90
N = 200_000


def log(msg):
    print("[k8s_daemonset.py %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


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
    """The (host, id) of every live executor, the driver excluded."""
    driver = sc.getConf().get("spark.driver.host")
    return sorted(
        e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos() if e.host() != driver
    )


SERVED = ("kshuffle_fetch_shuffle_blocks_total", "kshuffle_local_dirs_requests_total")


def served(daemons):
    """Per counter of SERVED, its sum over the node daemons' /metrics (admin port 7338)."""
    import urllib.request

    out = dict.fromkeys(SERVED, 0)
    for ip in daemons:
        with urllib.request.urlopen("http://%s:7338/metrics" % ip, timeout=10) as r:
            for line in r.read().decode().splitlines():
                name = line.split("{")[0].split(" ")[0]
                if name in out:
                    out[name] += int(float(line.rsplit(" ", 1)[1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-pid", type=int, required=True)
    ap.add_argument("--daemons", required=True, help="the node daemons' addresses, comma-separated")
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
        daemons = args.daemons.split(",")
        out["served_before_b"] = served(daemons)

        got = dict(pairs.reduceByKey(operator.add).collect())
        expected = {}
        for i in range(N):
            expected[i % 101] = expected.get(i % 101, 0) + i
        out["phase_b_correct"] = got == expected
        out["map_records_b"] = map_records.value
        out["phase_b_hosts"] = executors(sc)
        out["served_after_b"] = served(daemons)
        log("phase B done on %s" % out["phase_b_hosts"])
    finally:
        spark.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

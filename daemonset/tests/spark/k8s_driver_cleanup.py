#!/usr/bin/env python3
"""One application of the driver-cleanup scenario, run in cluster mode: the driver runs in a
driver pod of testkit's process kubelet (driven by `daemonset/tests/k8s_driver_cleanup.rs`).

With `--go`, the driver first waits until that file exists (at most RELEASE_TIMEOUT_S), so
the test decides when its executors are requested. A group-by count (JVM only: no Python workers on the executors) writes shuffle output on the executors (into the nodes' hostPath, registered
with the node daemons). Then the driver writes one JSON line (app id, result, executor hosts)
to the file `--marker` and waits until the file `--release` exists (at most
RELEASE_TIMEOUT_S) before it stops: the test decides when the application ends, or deletes
the driver pod while it waits.
"""

import argparse
import json
import os
import sys
import time

RELEASE_TIMEOUT_S = 150
N = 50_000
KEYS = 97


def log(msg):
    print("[k8s_driver_cleanup.py %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def wait_for(path):
    deadline = time.time() + RELEASE_TIMEOUT_S
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--marker", required=True)
    ap.add_argument("--release", required=True)
    ap.add_argument("--go")
    args = ap.parse_args()
    if args.go:
        log("waiting for %s" % args.go)
        wait_for(args.go)

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    app_id = sc.applicationId
    log("app %s" % app_id)
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    rows = spark.range(0, N, 1, 4).selectExpr("id %% %d as k" % KEYS).groupBy("k").count().collect()
    counts = {r["k"]: r["count"] for r in rows}
    want = {k: len(range(k, N, KEYS)) for k in range(KEYS)}
    driver = sc.getConf().get("spark.driver.host")
    hosts = sorted(
        e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos() if e.host() != driver
    )
    result = {
        "app_id": app_id,
        "spark_version": sc.version,
        "correct": counts == want,
        "driver_host": driver,
        "executor_hosts": hosts,
    }
    tmp = args.marker + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(result) + "\n")
    os.rename(tmp, args.marker)
    log("waiting for %s" % args.release)
    wait_for(args.release)
    spark.stop()
    log("stopped")


if __name__ == "__main__":
    main()

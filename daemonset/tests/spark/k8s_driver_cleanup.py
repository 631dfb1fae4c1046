#!/usr/bin/env python3
"""One application of the driver-cleanup scenario, run in cluster mode: the driver runs in a
driver pod of testkit's process kubelet (driven by `daemonset/tests/k8s_driver_cleanup.rs`).

With `--go`, the driver first waits until that file exists (at most RELEASE_TIMEOUT_S), so
the test decides when its executors are requested. A group-by count (JVM only: no Python workers on the
executors) writes shuffle output on the executors (into the nodes' hostPath, registered
with the node daemons). Then the driver writes one JSON line (app id, result, executor hosts)
to the file `--marker` and waits until the file `--release` exists (at most
RELEASE_TIMEOUT_S) before it stops: the test decides when the application ends, or deletes
the driver pod while it waits.
"""

import argparse
import os
import sys

# The helpers shared by the simulated-cluster job scripts (testkit/tests/spark).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "testkit", "tests", "spark"))
import k8s_jobs_common as common  # noqa: E402

RELEASE_TIMEOUT_S = 150
N = 50_000
KEYS = 97


def wait_for_file(path):
    """Waits until `path` exists, at most RELEASE_TIMEOUT_S; goes on either way (the test
    fails on what the application then does)."""
    if not common.wait_until(lambda: os.path.exists(path), RELEASE_TIMEOUT_S):
        common.log("%s did not appear within %d s: going on" % (path, RELEASE_TIMEOUT_S))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--marker", required=True)
    ap.add_argument("--release", required=True)
    ap.add_argument("--go")
    args = ap.parse_args()
    if args.go:
        common.log("waiting for %s" % args.go)
        wait_for_file(args.go)

    spark, result = common.spark_session()
    sc = spark.sparkContext
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    rows = spark.range(0, N, 1, 4).selectExpr("id %% %d as k" % KEYS).groupBy("k").count().collect()
    counts = {r["k"]: r["count"] for r in rows}
    want = {k: len(range(k, N, KEYS)) for k in range(KEYS)}
    result["correct"] = counts == want
    result["driver_host"] = sc.getConf().get("spark.driver.host")
    result["executor_hosts"] = common.executors(sc)
    common.write_json(args.marker, result, newline=True)
    common.log("waiting for %s" % args.release)
    wait_for_file(args.release)
    spark.stop()
    common.log("stopped")


if __name__ == "__main__":
    main()

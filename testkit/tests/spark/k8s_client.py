#!/usr/bin/env python3
"""A Spark application run by `spark-submit --master k8s://...` in client mode against
testkit's fake API server (driven by `tests/spark_k8s_client.rs`).

With `--go-file` it needs no executor to run a task: the test asserts what Spark's
Kubernetes client did through the API (its ConfigMap, its executor pods, its watch) while
the SparkContext is up, then tells the job to stop by creating the go file, and asserts that
Spark deleted its executor pods on stop. Exits non-zero if the go file does not appear within
GO_TIMEOUT_S (the SparkContext is still stopped).

With `--shuffle` it runs a reduceByKey on executors (run by the process kubelet), compares
the result with plain Python, records the executors' hosts, and stops.

Prints exactly one JSON line on stdout: {"app_id": ..., "spark_version": ..., "stopped": true,
...}. The whole process group (spark-submit's JVM and this script) is killed if the test
process `--test-pid` goes away, so nothing outlives a killed test.
"""

import argparse
import json
import os
import sys

# This script's directory is sys.path[0].
import k8s_jobs_common as common

GO_TIMEOUT_S = 120


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--go-file")
    ap.add_argument("--shuffle", action="store_true")
    ap.add_argument("--test-pid", type=int, required=True)
    args = ap.parse_args()
    common.exit_with(args.test_pid)

    spark, out = common.spark_session()
    sc = spark.sparkContext
    went = True
    if args.shuffle:
        got = sorted(
            sc.parallelize(range(100_000), 8)
            .map(lambda x: (x % 100, 1))
            .reduceByKey(lambda a, b: a + b, 4)
            .collect()
        )
        out["got"] = got
        out["expected"] = [(k, 1000) for k in range(100)]
        out["executor_hosts"] = common.executors(sc)
    if args.go_file:
        went = common.wait_until(lambda: os.path.exists(args.go_file), GO_TIMEOUT_S, 0.1)
    spark.stop()
    common.log("SparkContext stopped")
    out["stopped"] = True
    print(json.dumps(out), flush=True)
    if not went:
        common.log("no go file after %d s" % GO_TIMEOUT_S)
        sys.exit(3)


if __name__ == "__main__":
    main()

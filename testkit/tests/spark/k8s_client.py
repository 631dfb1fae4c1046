#!/usr/bin/env python3
"""A Spark application that only starts and stops, run by `spark-submit --master k8s://...`
in client mode against testkit's fake API server (driven by `tests/spark_k8s_client.rs`).

It needs no executor to run a task: the test asserts what Spark's Kubernetes client did
through the API (its ConfigMap, its executor pods, its watch) while the SparkContext is up,
then tells the job to stop by creating `--go-file`, and asserts that Spark deleted its
executor pods on stop.

Prints exactly one JSON line on stdout: {"app_id": ..., "spark_version": ..., "stopped": true}.
Exits non-zero if the go file does not appear within GO_TIMEOUT_S (the SparkContext is still
stopped). The whole process group (spark-submit's JVM and this script) is killed if the test
process `--test-pid` goes away, so nothing outlives a killed test.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

GO_TIMEOUT_S = 120


def log(msg):
    print("[k8s_client.py] " + msg, file=sys.stderr, flush=True)


def exit_with(pid):
    def watch():
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log("test process %d is gone: killing process group %d" % (pid, os.getpgrp()))
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-test", daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--go-file", required=True)
    ap.add_argument("--test-pid", type=int, required=True)
    args = ap.parse_args()
    exit_with(args.test_pid)

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    log("SparkContext up: %s" % sc.applicationId)
    deadline = time.monotonic() + GO_TIMEOUT_S
    went = False
    while time.monotonic() < deadline:
        if os.path.exists(args.go_file):
            went = True
            break
        time.sleep(0.1)
    app_id, version = sc.applicationId, spark.version
    spark.stop()
    log("SparkContext stopped")
    print(json.dumps({"app_id": app_id, "spark_version": version, "stopped": True}), flush=True)
    if not went:
        log("no go file after %d s" % GO_TIMEOUT_S)
        sys.exit(3)


if __name__ == "__main__":
    main()

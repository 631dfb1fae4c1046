#!/usr/bin/env python3
"""DaemonSet mode with dynamic allocation, run by `spark-submit --master k8s://...` in client
mode against testkit's fake API server and process kubelet (driven by
`daemonset/tests/k8s_daemonset.rs`).

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
import os
import sys

# The helpers shared by the simulated-cluster job scripts (testkit/tests/spark).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "testkit", "tests", "spark"))
import k8s_jobs_common as common  # noqa: E402

EXECUTORS_GONE_TIMEOUT_S = 90
N = 200_000
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
    common.exit_with(args.test_pid)

    spark, out = common.spark_session()
    sc = spark.sparkContext
    try:
        job = common.MapThenReduce(sc, N)
        job.map_stage(out)

        out["executors_gone"] = common.wait_until(
            lambda: not common.executors(sc), EXECUTORS_GONE_TIMEOUT_S
        )
        common.log("executors gone: %s" % out["executors_gone"])
        daemons = args.daemons.split(",")
        out["served_before_b"] = served(daemons)

        job.reduce_stage(out)
        out["served_after_b"] = served(daemons)
    finally:
        spark.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

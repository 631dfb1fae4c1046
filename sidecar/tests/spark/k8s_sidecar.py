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
import os
import sys

# The helpers shared by the simulated-cluster job scripts (testkit/tests/spark).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "testkit", "tests", "spark"))
import k8s_jobs_common as common  # noqa: E402

EXECUTORS_GONE_TIMEOUT_S = 90
TEST_TIMEOUT_S = 120
N = 200_000
# Map and reduce tasks of the one shuffle (MAPS and REDUCES of k8s_sidecar_spark.rs).
MAPS = 6
REDUCES = 4


def handshake(name, payload, wait_for):
    """Writes the JSON file `name` and waits for the test to create `wait_for`."""
    common.write_json(name, payload)
    common.wait_for(
        "the test to write %s" % wait_for, lambda: os.path.exists(wait_for), TEST_TIMEOUT_S, 0.1
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-pid", type=int, required=True)
    ap.add_argument("--dir", default=".", help="where the control files are")
    args = ap.parse_args()
    common.exit_with(args.test_pid)
    os.chdir(args.dir)

    spark, out = common.spark_session()
    sc = spark.sparkContext
    try:
        job = common.MapThenReduce(sc, N, maps=MAPS, reduces=REDUCES)
        job.map_stage(out)

        out["executors_gone"] = common.wait_until(
            lambda: not common.executors(sc), EXECUTORS_GONE_TIMEOUT_S
        )
        common.log("executors gone: %s" % out["executors_gone"])
        handshake("phase_a.json", out, "go_b")

        # Same partitioner: no new shuffle; REDUCES reduce tasks read the MAPS map outputs of
        # phase A.
        job.reduce_stage(out)
        handshake("phase_b.json", out, "go_end")
    finally:
        spark.stop()
    common.write_json("result.json", out)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

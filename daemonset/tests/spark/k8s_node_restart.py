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
import os
import sys

# The helpers shared by the simulated-cluster job scripts (testkit/tests/spark).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "testkit", "tests", "spark"))
import k8s_jobs_common as common  # noqa: E402

WAIT_S = 90
N = 200_000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-pid", type=int, required=True)
    ap.add_argument("--signal-dir", required=True)
    args = ap.parse_args()
    common.exit_with(args.test_pid)

    spark, out = common.spark_session()
    sc = spark.sparkContext
    try:
        # Both executors (spark.dynamicAllocation.initialExecutors=2) before the map stage, so
        # that both nodes hold map output.
        common.wait_for("2 executors", lambda: len(common.executors(sc)) >= 2, WAIT_S)
        job = common.MapThenReduce(sc, N)
        job.map_stage(out)

        common.wait_for("every executor to go", lambda: not common.executors(sc), WAIT_S)
        common.log("executors gone")
        common.write_json(os.path.join(args.signal_dir, "phase_a.json"), out)
        go = os.path.join(args.signal_dir, "go")
        common.wait_for("the test's go", lambda: os.path.exists(go), WAIT_S)
        common.log("go: phase B")

        job.reduce_stage(out)
    finally:
        spark.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

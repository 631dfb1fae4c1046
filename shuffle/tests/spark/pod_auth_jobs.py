"""Real Spark with spark.authenticate against kshuffle-node --auth-from-pods.

One session, one JSON line: a SparkContext with spark.authenticate=true and a fixed
spark.authenticate.secret (with --crypto: spark.network.crypto.enabled, the AuthEngine; else
SASL, Spark's default). As soon as the context exists, its application id is written to
<signal-dir>/app-id: the harness then creates an executor pod carrying that id and the secret
in the fake API server, which is the only place the node daemon learns the secret from.
Executors that tried to register before are refused and retry
(spark.shuffle.registration.maxAttempts, 5 s apart). A reduceByKey job's result is checked
exactly.

Reuses the environment helpers of jobs.py and the job of security_jobs.py.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs  # noqa: E402
import security_jobs  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("session", choices=["podauth"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local-dir", required=True)
    p.add_argument("--scratch", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--crypto", action="store_true")
    p.add_argument("--signal-dir", required=True)
    p.add_argument("--conf", action="append", default=[])
    p.add_argument("--exit-with-parent", action="store_true")
    args = p.parse_args()
    if args.exit_with_parent:
        jobs.exit_with_parent()
    jobs.prepare_spark_home(args.scratch)

    from pyspark import SparkContext

    conf = (
        jobs.base_conf(args, "kshuffle-pod-auth")
        .set("spark.authenticate", "true")
        .set("spark.authenticate.secret", args.secret)
        .set("spark.network.crypto.enabled", "true" if args.crypto else "false")
        # Registration races the harness creating the pod: retry (5 s apart) until it has.
        .set("spark.shuffle.registration.maxAttempts", "8")
    )
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    app_id = sc.applicationId
    tmp = os.path.join(args.signal_dir, "app-id.tmp")
    with open(tmp, "w") as f:
        f.write(app_id)
    os.rename(tmp, os.path.join(args.signal_dir, "app-id"))
    ok, error = security_jobs.run_with_deadline(lambda: security_jobs.word_job(sc), 240, sc)
    result = {"app_id": app_id, "ok": bool(ok and ok[0]), "error": error}
    jobs.log("podauth: %s" % result)
    try:
        sc.stop()
    except Exception as e:  # noqa: BLE001
        jobs.log("stop failed: %s" % e)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

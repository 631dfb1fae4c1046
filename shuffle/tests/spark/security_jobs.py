"""Real Spark against kshuffled with spark.authenticate, with RPC TLS, and across a daemon
restart.

Sessions (one per invocation; prints one JSON line with the results):
  auth      one job with the right secret (SASL, Spark's default) and, with --crypto, with
            spark.network.crypto.enabled (AuthEngine + AES-CTR); with --wrong-secret first a
            session whose secret the daemon does not know, which must fail.
  restart   job 1 writes shuffle output; then this script tells the harness (a file in
            --signal-dir) and waits until the daemon was SIGKILLed; job 2 then starts while the
            daemon is down and must complete once the harness restarts it, reading the same
            map output (an accumulator proves nothing was recomputed).
  tls       one job with spark.ssl.rpc.enabled (Spark 4) and --keystore as Spark's key and
            trust store; with --secret, spark.authenticate and spark.network.crypto.enabled too.

Reuses the environment helpers of jobs.py.
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs  # noqa: E402


def expected_counts(n, keys):
    counts = {}
    for x in range(n):
        counts[x % keys] = counts.get(x % keys, 0) + x
    return sorted(counts.items())


# How long a job waits when no executor can register with the daemon (a wrong secret):
# it can only fail or wait (each executor is refused at start and relaunched for as long as
# the job waits: Spark 3.5's master never gives up on the app). Twice what the job takes
# when executors register, on a loaded 2-core machine.
REFUSED_JOB_DEADLINE_S = 30


def word_job(sc, n=200_000, keys=1000, parts=40):
    got = sorted(sc.parallelize(range(n), 8).map(lambda x: (x % keys, x)).reduceByKey(lambda a, b: a + b, parts).collect())
    return got == expected_counts(n, keys), len(got)


def run_with_deadline(fn, seconds, sc):
    """Runs fn(); cancels Spark's jobs if it takes longer. Returns (result, error)."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 - reported to the harness
            out["error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        sc.cancelAllJobs()
        t.join(30)
        out.setdefault("error", "timed out after %ss" % seconds)
    return out.get("result"), out.get("error")


def stop_and_wait(sc, seconds=60):
    """Stops `sc` and waits until the JVM has no active SparkContext.

    When the master removes an application (its executors could not register), Spark stops
    the context from a thread of its own; `sc.stop()` may then fail or return before that
    thread is done, and a new SparkContext made meanwhile fails with "Only one SparkContext
    should be running in this JVM".
    """
    # SparkContext.getActive (private[spark] in Scala, public in the bytecode) on the
    # companion object; py4j cannot name it statically.
    companion = sc._jvm.java.lang.Class.forName("org.apache.spark.SparkContext$")
    spark_context_object = companion.getField("MODULE$").get(None)
    try:
        sc.stop()
    except Exception as e:  # noqa: BLE001
        jobs.log("stop failed: %s" % e)
    deadline = time.time() + seconds
    while spark_context_object.getActive().isDefined():
        if time.time() > deadline:
            raise RuntimeError("the SparkContext did not stop within %d s" % seconds)
        time.sleep(0.2)


def session_auth(args):
    from pyspark import SparkContext

    results = {}
    variants = []
    if args.wrong_secret:
        variants.append(("wrong_secret", args.secret + "-wrong", False))
    variants.append(("sasl", args.secret, False))
    if args.crypto:
        variants.append(("auth_engine", args.secret, True))
    for name, secret, crypto in variants:
        conf = (
            jobs.base_conf(args, "kshuffle-auth-" + name)
            .set("spark.authenticate", "true")
            .set("spark.authenticate.secret", secret)
            .set("spark.network.crypto.enabled", "true" if crypto else "false")
            # Executors that cannot register make the master give up on the app soon.
            .set("spark.deploy.maxExecutorRetries", "2")
        )
        sc = SparkContext(conf=conf)
        sc.setLogLevel("WARN")
        deadline_s = REFUSED_JOB_DEADLINE_S if name == "wrong_secret" else 240
        ok, error = run_with_deadline(lambda: word_job(sc), deadline_s, sc)
        results[name] = {"ok": bool(ok and ok[0]), "error": error}
        jobs.log("%s: %s" % (name, results[name]))
        stop_and_wait(sc)
    return results


def session_restart(args):
    from pyspark import SparkContext

    conf = (
        jobs.base_conf(args, "kshuffle-restart")
        # Fetches that meet a dead daemon are retried (IOExceptions), as in production.
        .set("spark.shuffle.io.maxRetries", "5")
        .set("spark.shuffle.io.retryWait", "2s")
    )
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    n, keys = 300_000, 1000
    records = sc.accumulator(0)

    def tag(x):
        records.add(1)
        return (x % keys, x)

    shuffled = sc.parallelize(range(n), 8).map(tag).reduceByKey(lambda a, b: a + b, 40)
    first = shuffled.count()
    executors_before = jobs.live_executor_ids(sc)
    open(os.path.join(args.signal_dir, "phase1.done"), "w").close()
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(args.signal_dir, "killed")):
        if time.time() > deadline:
            raise SystemExit("the harness never killed the daemon")
        time.sleep(0.1)
    # The daemon is down now: this job's fetches fail and are retried until it is back.
    got = sorted(shuffled.collect())
    executors_after = jobs.live_executor_ids(sc)
    sc.stop()
    return {
        "first_count": first,
        "exact": got == expected_counts(n, keys),
        "records_mapped": records.value,
        "records": n,
        "executors_before": executors_before,
        "executors_after": executors_after,
    }


def session_tls(args):
    """Spark 4's RPC TLS (`spark.ssl.rpc.*`, which wraps the shuffle client's connections
    too) against the daemon serving TLS. With --secret, spark.authenticate and
    spark.network.crypto.enabled are on as well: their handshake (and any AES layer) runs
    inside TLS."""
    from pyspark import SparkContext

    name = "tls_auth" if args.secret else "tls"
    conf = jobs.base_conf(args, "kshuffle-rpc-" + name).set("spark.ssl.rpc.enabled", "true")
    for prefix in ("keyStore", "trustStore"):
        conf.set("spark.ssl.rpc.%s" % prefix, args.keystore)
        conf.set("spark.ssl.rpc.%sPassword" % prefix, args.store_password)
        conf.set("spark.ssl.rpc.%sType" % prefix, "PKCS12")
    conf.set("spark.ssl.rpc.keyPassword", args.store_password)
    if args.secret:
        conf.set("spark.authenticate", "true")
        conf.set("spark.authenticate.secret", args.secret)
        conf.set("spark.network.crypto.enabled", "true")
    sc = SparkContext(conf=conf)
    sc.setLogLevel("WARN")
    ok, error = run_with_deadline(lambda: word_job(sc), 240, sc)
    stop_and_wait(sc)
    return {name: {"ok": bool(ok and ok[0]), "error": error}}


SESSIONS = {"auth": session_auth, "restart": session_restart, "tls": session_tls}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("session", choices=sorted(SESSIONS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local-dir", required=True)
    p.add_argument("--scratch", required=True)
    p.add_argument("--secret", default="")
    p.add_argument("--wrong-secret", action="store_true")
    p.add_argument("--crypto", action="store_true")
    p.add_argument("--signal-dir", default="")
    p.add_argument("--keystore", default="")
    p.add_argument("--store-password", default="")
    p.add_argument("--conf", action="append", default=[])
    p.add_argument("--exit-with-parent", action="store_true")
    args = p.parse_args()
    if args.exit_with_parent:
        jobs.exit_with_parent()
    jobs.prepare_spark_home(args.scratch)
    result = SESSIONS[args.session](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

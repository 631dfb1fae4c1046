#!/usr/bin/env bash
# Builds the JVM adapter's jar against a Spark installation's jars (Spark 3.3+; checked with
# 3.5.9 and 4.3.0), e.g. `bash scheduler/jvm/build.sh "$SPARK_HOME" kshuffle-spark.jar`.
# Needs a JDK (11 or later). The jar holds one class, io.kshuffle.spark.KshufflePodsAllocator;
# see scheduler/README.md for the settings that put it to use.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 SPARK_HOME OUTPUT.jar" >&2
  exit 64
fi
spark_home=$1
out=$2
if [ ! -d "$spark_home/jars" ]; then
  echo "$0: no jars/ under $spark_home (a Spark installation, or pyspark's package directory)" >&2
  exit 66
fi
here=$(cd "$(dirname "$0")" && pwd)
classes=$(mktemp -d)
trap 'rm -rf "$classes"' EXIT
javac --release 11 -Xlint:all,-path -Werror -cp "$spark_home/jars/*" -d "$classes" \
  "$here/src/io/kshuffle/spark/KshufflePodsAllocator.java"
jar --create --file "$out" -C "$classes" .

#!/usr/bin/env python3
"""Records the client->server bytes of real Spark jobs against kshuffled and splits them into
seed corpora for the fuzz targets (fuzz/corpus/<target>/). Run it through record-corpus.sh.

A recording TCP proxy on 127.0.0.1 sits between Spark's executors (spark.shuffle.service.port
points at it) and the daemon. Sessions: `auth` of shuffle/tests/spark/security_jobs.py (one
job with SASL DIGEST-MD5, one with the AuthEngine and AES-CTR; the daemon has the secret),
and `old-protocol` of jobs.py (OpenBlocks with string block ids). Afterwards:
- wire_decode: every distinct frame (a few per frame type), plus each connection's first KiBs;
- message_decode: the body of every RpcRequest/OneWayMessage (a few per message type);
- block_id: the block ids the fetches named (OpenBlocks strings, FetchShuffleBlocks ints
  rendered as Spark renders them) and those of the files Spark wrote;
- index_file: the .index files Spark wrote, behind the target's header (see
  shuffle/src/fuzzing/index.rs);
- auth_handshake: the recorded handshake payloads as the target's "raw" scenario (see
  shuffle/src/fuzzing/auth.rs), plus one seed per scripted scenario.
Files are named by the SHA-1 of their content (deduplicated), as libFuzzer names them.
"""

import argparse
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PER_KIND = 6  # seeds kept per frame type / message type / file kind
SECRET = "kshuffle-corpus-secret"


class Proxy:
    """Accepts on 127.0.0.1, forwards to `upstream`, records what each client sent."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.recordings = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            rec = bytearray()
            with self.lock:
                self.recordings.append(rec)
            threading.Thread(target=pipe, args=(client, server, rec), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, None), daemon=True).start()


def pipe(src, dst, rec):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if rec is not None:
                rec.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def frames(stream):
    """Splits a plaintext stream into frames; stops at the first thing that is not one (an
    encrypted connection after its handshake)."""
    pos = 0
    while pos + 9 <= len(stream):
        (length,) = struct.unpack_from(">q", stream, pos)
        if length < 9 or length > 16 << 20 or pos + length > len(stream):
            return
        yield bytes(stream[pos:pos + length])
        pos += length


def rpc_body(frame):
    kind = frame[8]
    if kind == 3:  # RpcRequest: requestId i64, bodyLength i32
        return frame[21:]
    if kind == 9:  # OneWayMessage: bodyLength i32
        return frame[13:]
    return None


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def i8(self):
        self.p += 1
        return self.b[self.p - 1]

    def i32(self):
        self.p += 4
        return struct.unpack_from(">i", self.b, self.p - 4)[0]

    def i64(self):
        self.p += 8
        return struct.unpack_from(">q", self.b, self.p - 8)[0]

    def string(self):
        n = self.i32()
        self.p += n
        return self.b[self.p - n:self.p].decode()


def block_ids_of(body):
    """Block ids named by an OpenBlocks (type 0) or FetchShuffleBlocks (type 9) message."""
    r = Reader(body)
    try:
        kind = r.i8()
        if kind == 0:
            r.string(), r.string()
            return [r.string() for _ in range(r.i32())]
        if kind == 9:
            r.string(), r.string()
            shuffle = r.i32()
            maps = [r.i64() for _ in range(r.i32())]
            reduces = [[r.i32() for _ in range(r.i32())] for _ in range(r.i32())]
            batch = r.i8() != 0
            ids = []
            for m, rs in zip(maps, reduces):
                if batch:
                    ids += ["shuffle_%d_%d_%d_%d" % (shuffle, m, rs[i], rs[i + 1]) for i in range(0, len(rs) - 1, 2)]
                else:
                    ids += ["shuffle_%d_%d_%d" % (shuffle, m, x) for x in rs]
            return ids
    except (struct.error, IndexError, UnicodeDecodeError):
        pass
    return []


def index_seed(index):
    n = len(index) // 8 - 1
    ranges = [(0, 1), (0, n), (n - 1, n), (max(n // 2, 1), n), (n, n + 1)]
    head = bytes([1, len(ranges)]) + b"".join(struct.pack(">ii", s, e) for s, e in ranges)
    return head


def auth_seed(payloads, flags=0):
    out = bytes([flags]) + b"\x00\x00\x00\x00\x00\x00\x00\x2a"
    for p in payloads:
        out += struct.pack(">H", len(p)) + p
    return out


def save(out_dir, target, data, kept):
    d = os.path.join(out_dir, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    if name not in kept.setdefault(target, set()):
        kept[target].add(name)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def copy_index_files(local, copies, done):
    """Copies every complete shuffle file name and index file under `local` until `done`."""
    while not done.wait(0.3):
        for dirpath, _, files in os.walk(local):
            for f in files:
                if not f.startswith(("shuffle_", "rdd_")) or ".tmp" in f or os.path.exists(os.path.join(copies, f)):
                    continue
                try:
                    with open(os.path.join(dirpath, f), "rb") as src:
                        data = src.read() if f.endswith(".index") else b""
                except OSError:
                    continue
                if f.endswith(".index") and (len(data) < 16 or len(data) % 8):
                    continue  # not completely written yet
                with open(os.path.join(copies, f), "wb") as dst:
                    dst.write(data)


def start_daemon(binary, root, secret_file):
    state = root + ".state"
    cmd = [binary, "--bind", "127.0.0.1", "--port", "0", "--admin-port", "0", "--log-format", "json",
           "--allowed-root", root, "--state-dir", state]
    if secret_file:
        cmd += ["--auth-secret-file", secret_file]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("fields", {}).get("message") == "listening":
            host, port = ev["fields"]["addr"].rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, (host, int(port))
    proc.kill()
    raise SystemExit("kshuffled did not start")


def run_session(args, work, name, script, session, extra, secret):
    root = os.path.join(work, name, "allowed")
    local = os.path.join(root, "spark-local")
    scratch = os.path.join(work, name, "scratch")
    os.makedirs(local)
    os.makedirs(scratch)
    secret_file = None
    if secret:
        secret_file = os.path.join(work, name, "secret")
        with open(secret_file, "w") as f:
            f.write(secret + "\n")
    daemon, addr = start_daemon(args.daemon, root, secret_file)
    proxy = Proxy(addr)
    python = os.path.join(args.venv, "bin", "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env.update(PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python, SPARK_LOCAL_IP="127.0.0.1", PYTHONUNBUFFERED="1")
    cmd = [python, os.path.join(args.jobs, script), session, "--port", str(proxy.port),
           "--local-dir", local, "--scratch", scratch] + extra
    print("recording:", name, file=sys.stderr)
    # Spark's standalone worker deletes an application's dirs when it ends: copy the index
    # files while the jobs run.
    copies = os.path.join(work, name, "index-copies")
    os.makedirs(copies)
    done = threading.Event()
    threading.Thread(target=copy_index_files, args=(local, copies, done), daemon=True).start()
    run = subprocess.run(cmd, env=env, cwd=os.path.join(work, name), capture_output=True, text=True, timeout=600)
    done.set()
    if run.returncode != 0:
        daemon.kill()
        raise SystemExit("%s session failed (%s):\n%s" % (name, run.returncode, run.stderr[-3000:]))
    print((run.stdout.strip().splitlines() or [""])[-1][:300], file=sys.stderr)
    time.sleep(1)
    daemon.terminate()
    daemon.wait(30)
    indexes = [os.path.join(copies, f) for f in sorted(os.listdir(copies))]
    return [bytes(r) for r in proxy.recordings], indexes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--jobs", required=True, help="shuffle/tests/spark")
    p.add_argument("--out", required=True, help="fuzz/corpus")
    args = p.parse_args()
    args.jobs, args.out, args.daemon, args.venv = (os.path.abspath(x) for x in (args.jobs, args.out, args.daemon, args.venv))
    work = tempfile.mkdtemp(prefix="kshuffle-corpus-")
    recordings, files = [], []
    for name, script, session, extra, secret in [
        ("auth", "security_jobs.py", "auth", ["--secret", SECRET, "--crypto"], SECRET),
        ("old-protocol", "jobs.py", "old-protocol", [], None),
    ]:
        r, f = run_session(args, work, name, script, session, extra, secret)
        recordings += r
        files += f
    kept, per_kind = {}, {}

    def budget(key):
        per_kind[key] = per_kind.get(key, 0) + 1
        return per_kind[key] <= PER_KIND

    block_ids = set()
    for stream in recordings:
        if stream:
            save(args.out, "wire_decode", stream[:4096], kept)
        auth_payloads = []
        for frame in frames(stream):
            if budget(("frame", frame[8])):
                save(args.out, "wire_decode", frame, kept)
            body = rpc_body(frame)
            if not body:
                continue
            if body[0] in (0xEA, 0xFB):
                auth_payloads.append(body)
                continue
            if budget(("message", body[0])):
                save(args.out, "message_decode", body, kept)
            block_ids.update(block_ids_of(body))
        if auth_payloads and budget(("auth", auth_payloads[0][0])):
            save(args.out, "auth_handshake", auth_seed(auth_payloads), kept)
    for path in files:
        name = os.path.basename(path)
        stem = name.rsplit(".", 1)[0]
        if stem.startswith(("shuffle_", "rdd_")):
            block_ids.add(stem)
        if name.endswith(".index") and budget(("index", os.path.getsize(path))):
            with open(path, "rb") as f:
                index = f.read()
            save(args.out, "index_file", index_seed(index) + index, kept)
    for block_id in sorted(block_ids)[:60]:
        save(args.out, "block_id", block_id.encode(), kept)
    # One seed per scripted auth scenario (flags: see shuffle/src/fuzzing/auth.rs).
    for flags in (0x08, 0x09, 0x0A, 0x10, 0x18, 0x58, 0x1C):
        save(args.out, "auth_handshake", auth_seed([], flags), kept)
    print(json.dumps({t: len(v) for t, v in sorted(kept.items())}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark etcd-adapter against a real etcd with the same client and workloads.

Starts a real etcd (temporary data dir, loopback ports, default settings: it fsyncs every
write, as in production) and etcd-adapter (through twistd, as an operator runs it), then
runs each workload against each server for a fixed time with the same client: grpc.aio
(grpcio) generic calls carrying our generated messages, over one connection with
``--concurrency`` calls in flight.

Workloads:
  put             Put of a distinct key, 256-byte value
  get             point Range of an existing key (random among 1000)
  range           Range of a 100-key prefix (256-byte values)
  mixed           --writers put loops (32) and --readers get loops (4) at once: point
                  gets of existing keys while puts of distinct keys queue for the
                  write path (rows mixed-get and mixed-put); on the SQL stores this is
                  where reads waiting behind writes would show
  watch-latency   --watchers watchers (1000) on one prefix over --watch-streams Watch
                  streams (10) of one connection; one writer puts keys under the prefix at
                  --watch-rate puts/s (10) for --seconds; latency = put acknowledged ->
                  event received, at every watcher (negative if the event came first)
  watch-idle-rss  --idle-watchers idle watchers (10000, one key each) over --idle-streams
                  streams (100); server RSS growth per watcher

Prints ops/s, p50 and p99 latency (ms) and the server's CPU time per operation (servers
we started) per workload for both servers, the ratio adapter/etcd of throughput, with a
SQL store the adapter's SQL statements per operation (its own count) and the database's
(MariaDB/MySQL: statements, server-wide; PostgreSQL: commits), and the servers' resident
memory at the end; for the watch
workloads p50/p99/max event latency, events delivered, the client's CPU use (near 100 %:
the figures are the client's, not the server's) and RSS bytes per watcher.

One Python client decodes at most some 20,000 watch responses a second on a small machine,
so watch-latency's default rate keeps --watchers x --watch-rate below that (--watch-rate
50 with 1000 watchers measures the client's backlog on both servers).

Usage:
  python bench/bench.py                              # both servers, 5 s per workload
  python bench/bench.py --only etcd --seconds 2
  python bench/bench.py --adapter-endpoint 127.0.0.1:2379 --only adapter
  python bench/bench.py --workload watch-latency --workload watch-idle-rss

The client runs on the same machine and competes with the server for CPU; compare the
two columns, not the absolute figures across machines.
"""

import argparse
import asyncio
import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import grpc  # noqa: E402  (grpcio: pip install -e '.[test]')

from etcdadapter.pb.etcdserverpb import rpc_pb2  # noqa: E402
from etcdadapter.store.mvcc import prefix_end  # noqa: E402

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

GET_KEYS = 1000
RANGE_KEYS = 100
PREFIX = b"/bench/"


# ---------------------------------------------------------------------------------------
# Servers

def free_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class Server(object):
    """A server process we started (in its own process group) or an external endpoint."""

    def __init__(self, name, endpoint=None):
        self.name = name
        self.endpoint = endpoint
        self.proc = None
        self.tmp = None
        self.log_path = None

    def command(self, port):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def cwd(self):
        return self.tmp

    def start(self):
        if self.endpoint is not None:        # external server
            wait_ready(self, START_TIMEOUT)
            return
        self.tmp = tempfile.mkdtemp(prefix="etcdadapter-bench-%s-" % self.name)
        for attempt in range(3):
            port = free_port()
            self.endpoint = "127.0.0.1:%d" % port
            self.log_path = os.path.join(self.tmp, "server-%d.log" % attempt)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self.command(port), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=self.cwd(), env=self.env(),
                    start_new_session=True)
            try:
                wait_ready(self, START_TIMEOUT)
                return
            except RuntimeError:
                in_use = "address already in use" in self.log_text().lower()
                self.stop()
                if not in_use or attempt == 2:
                    raise

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def rss_mib(self):
        """Resident memory of the process we started, in MiB, or None."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def cpu_seconds(self):
        """User + system CPU time of the process we started, or None."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counters(self):
        """Counters to report per operation: {name: value} (none by default)."""
        return {}

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()

    def cleanup(self):
        self.stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class Etcd(Server):
    def __init__(self, endpoint=None, data_parent=None):
        Server.__init__(self, "etcd", endpoint)
        self.data_parent = data_parent

    def start(self):
        if self.endpoint is None and self.data_parent:
            self.tmp = tempfile.mkdtemp(prefix="etcdadapter-bench-etcd-",
                                        dir=self.data_parent)
        Server.start(self)

    def command(self, port):
        peer = "http://127.0.0.1:%d" % free_port()
        client = "http://127.0.0.1:%d" % port
        data = os.path.join(self.tmp, "data-%d" % port)
        return [shutil.which("etcd") or "etcd",
                "--name", "bench", "--data-dir", data,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "bench=" + peer,
                "--initial-cluster-token", "bench-%d" % port,
                "--logger", "zap", "--log-outputs", "stderr"]

    def env(self):
        # etcd also reads its flags from ETCD_* variables (and ETCD_ADAPTER_* would confuse it).
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


class Adapter(Server):
    def __init__(self, endpoint=None, store=None):
        Server.__init__(self, "adapter", endpoint)
        self.store = store

    def command(self, port):
        cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "etcd-adapter",
               "--listen", "tcp:%d:interface=127.0.0.1" % port]
        if self.store:
            cmd += ["--store", self.store]
        return cmd

    def cwd(self):
        return REPO_ROOT

    def counters(self):
        """The adapter's own count of SQL statements, and the database's count of
        statements (MariaDB/MySQL: Questions, server-wide) or commits (PostgreSQL)."""
        out = {}
        try:
            import urllib.request
            with urllib.request.urlopen("http://%s/metrics" % self.endpoint, timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("etcd_adapter_sql_statements_total "):
                        out["stmts"] = float(line.split()[1])
        except OSError:
            pass
        store = self.store or ""
        try:
            if store.startswith(("mysql://", "tidb://")):
                out["db stmts"] = _mysql_questions(store)
            elif store.startswith(("postgresql://", "postgres://")):
                out["db xacts"] = _pg_commits(store)
        except Exception as exc:  # noqa: BLE001  -- the figures are optional
            print("(database counters unavailable: %s)" % exc, file=sys.stderr)
        return out

    def env(self):
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
        return env


def _mysql_questions(url):
    import pymysql
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306,
                           user=u.username or "root", password=u.password or "")
    try:
        cur = conn.cursor()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
        return float(cur.fetchone()[1]) - 1          # not counting this one
    finally:
        conn.close()


def _pg_commits(url):
    import psycopg
    from urllib.parse import urlsplit
    u = urlsplit(url)
    with psycopg.connect(host=u.hostname or "127.0.0.1", port=u.port or 5432,
                         user=u.username or "postgres", dbname=u.path.lstrip("/") or
                         "postgres", autocommit=True) as conn:
        return float(conn.execute("SELECT xact_commit FROM pg_stat_database "
                                  "WHERE datname = current_database()").fetchone()[0])


def _ser(msg):
    return msg.SerializeToString()


def wait_ready(server, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError("%s exited with status %s; log:\n%s"
                               % (server.name, server.proc.returncode,
                                  tail(server.log_text())))
        try:
            with grpc.insecure_channel(server.endpoint) as channel:
                call = channel.unary_unary(
                    "/etcdserverpb.KV/Range", request_serializer=_ser,
                    response_deserializer=rpc_pb2.RangeResponse.FromString)
                call(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True),
                     timeout=1.0)
            return
        except grpc.RpcError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError("%s on %s not ready after %.0f s (last error: %s); log:\n%s"
                       % (server.name, server.endpoint, timeout, last,
                          tail(server.log_text())))


def tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


def server_version(endpoint):
    """Maintenance.Status version, or a note why not."""
    try:
        with grpc.insecure_channel(endpoint) as channel:
            call = channel.unary_unary(
                "/etcdserverpb.Maintenance/Status", request_serializer=_ser,
                response_deserializer=rpc_pb2.StatusResponse.FromString)
            return call(rpc_pb2.StatusRequest(), timeout=5.0).version or "?"
    except grpc.RpcError as exc:
        return "? (Status: %s)" % exc.code().name


# ---------------------------------------------------------------------------------------
# Workloads

class Client(object):
    def __init__(self, endpoint):
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.put = self.channel.unary_unary(
            "/etcdserverpb.KV/Put", request_serializer=_ser,
            response_deserializer=rpc_pb2.PutResponse.FromString)
        self.range = self.channel.unary_unary(
            "/etcdserverpb.KV/Range", request_serializer=_ser,
            response_deserializer=rpc_pb2.RangeResponse.FromString)

    async def close(self):
        await self.channel.close()


def value(size, i):
    v = (b"%d:" % i) * (size // 2 + 1)
    return v[:size]


async def populate(client, args, run_id):
    """Keys the get and range workloads read."""
    sem = asyncio.Semaphore(args.concurrency)

    async def put(key, val):
        async with sem:
            await client.put(rpc_pb2.PutRequest(key=key, value=val), timeout=30)

    jobs = [put(PREFIX + b"get/%s/%05d" % (run_id, i), value(args.value_size, i))
            for i in range(GET_KEYS)]
    jobs += [put(PREFIX + b"range/%s/%05d" % (run_id, i), value(args.value_size, i))
             for i in range(RANGE_KEYS)]
    await asyncio.gather(*jobs)


def make_workloads(client, args, run_id):
    val = value(args.value_size, 7)
    rng = random.Random(1)
    range_prefix = PREFIX + b"range/%s/" % run_id
    range_req = rpc_pb2.RangeRequest(key=range_prefix, range_end=prefix_end(range_prefix))
    get_reqs = [rpc_pb2.RangeRequest(key=PREFIX + b"get/%s/%05d" % (run_id, i))
                for i in range(GET_KEYS)]

    def put_op(worker, n):
        key = PREFIX + b"put/%s/%d/%d" % (run_id, worker, n)
        return client.put(rpc_pb2.PutRequest(key=key, value=val), timeout=30)

    async def get_op(worker, n):
        resp = await client.range(rng.choice(get_reqs), timeout=30)
        if resp.count != 1:
            raise RuntimeError("get: expected 1 key, got %d" % resp.count)

    async def range_op(worker, n):
        resp = await client.range(range_req, timeout=30)
        if len(resp.kvs) != RANGE_KEYS:
            raise RuntimeError("range: expected %d keys, got %d" % (RANGE_KEYS, len(resp.kvs)))

    return [("put", put_op), ("get", get_op), ("range", range_op)]


async def run_mixed(ops, args):
    """--writers put loops and --readers get loops at the same time, on one connection:
    {"mixed-put": result, "mixed-get": result}."""
    put, get = run_workload(ops["put"], args.seconds, args.writers, args.warmup), \
        run_workload(ops["get"], args.seconds, args.readers, args.warmup)
    put, get = await asyncio.gather(put, get)
    return {"mixed-put": put, "mixed-get": get}


def pct_ms(values, p):
    """The p-th quantile (0..1) of sorted ``values`` (seconds), in ms."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))] * 1000.0


async def run_workload(op, seconds, concurrency, warmup):
    """Run op from `concurrency` workers for `seconds`; returns a result dict."""
    latencies = []
    errors = []
    counter = [0]
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker(w):
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await op(w, counter[0])
            except Exception as exc:  # noqa: BLE001  -- report, keep going
                errors.append(exc)
                if len(errors) > 100:
                    return
            t1 = time.perf_counter()
            counter[0] += 1
            n += 1
            if t0 >= measure_from:
                latencies.append(t1 - t0)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    end = time.perf_counter()
    latencies.sort()
    elapsed = end - measure_from
    return {"ops": len(latencies), "ops_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
            "total_ops": counter[0],
            "p50": pct_ms(latencies, 0.50), "p99": pct_ms(latencies, 0.99),
            "errors": len(errors),
            "error": repr(errors[0]) if errors else None}


# ---------------------------------------------------------------------------------------
# Watch workloads

class WatchStreams(object):
    """Watch streams on one connection; a reader task per stream records every event as
    (revision, arrival time)."""

    def __init__(self, endpoint):
        self.channel = grpc.aio.insecure_channel(endpoint)
        self._open = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=_ser,
            response_deserializer=rpc_pb2.WatchResponse.FromString)
        self.calls = []
        self.tasks = []
        self.created = 0
        self.refused = 0                 # created + canceled, or the stream failed
        self.error = None
        self.arrivals = []

    def open(self):
        call = self._open()
        self.calls.append(call)
        self.tasks.append(asyncio.ensure_future(self._read(call)))
        return call

    async def _read(self, call):
        arrivals = self.arrivals
        try:
            async for r in call:
                now = time.monotonic()
                if r.created:
                    if r.canceled:
                        self.refused += 1
                        self.error = self.error or r.cancel_reason
                    else:
                        self.created += 1
                    continue
                for ev in r.events:
                    arrivals.append((ev.kv.mod_revision, now))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.refused += 1
                self.error = self.error or repr(exc)

    async def create(self, call, key, range_end=b""):
        await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end)))

    async def wait_created(self, n, timeout):
        deadline = time.monotonic() + timeout
        while self.created + self.refused < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.created

    async def close(self):
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.channel.close()


async def watch_latency(server, client, args, run_id):
    """--watchers watchers on one prefix; put-acknowledged -> event-received latency."""
    prefix = PREFIX + b"watch/%s/" % run_id
    ws = WatchStreams(server.endpoint)
    errors = []
    try:
        calls = [ws.open() for _ in range(args.watch_streams)]
        for i in range(args.watchers):
            await ws.create(calls[i % len(calls)], prefix, prefix_end(prefix))
        created = await ws.wait_created(args.watchers, START_TIMEOUT)
        if created < args.watchers:
            errors.append("%d of %d watchers created (%s)" % (created, args.watchers,
                                                              ws.error))
        val = value(64, 1)
        acks = {}                        # revision -> ack time, measured puts only
        puts = failed_puts = 0
        start = time.monotonic()
        measure_from = start + args.warmup
        cpu0 = wall0 = None
        while True:
            due = start + puts / args.watch_rate
            if due >= measure_from + args.seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if cpu0 is None and due >= measure_from:
                cpu0, wall0 = time.process_time(), time.monotonic()
            try:
                resp = await client.put(rpc_pb2.PutRequest(key=prefix + b"%d" % puts,
                                                           value=val), timeout=30)
            except grpc.RpcError as exc:
                errors.append(repr(exc))
                failed_puts += 1
                continue
            finally:
                puts += 1
            if due >= measure_from:
                acks[resp.header.revision] = time.monotonic()
        # Every watcher gets every put (warm-up ones too): wait for the last ones.
        total = (puts - failed_puts) * created
        deadline = time.monotonic() + max(10.0, args.seconds)
        while len(ws.arrivals) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cpu = ((time.process_time() - cpu0) / (time.monotonic() - wall0)
               if cpu0 is not None else float("nan"))
        lat = sorted(t - acks[rev] for rev, t in ws.arrivals if rev in acks)
        expected = len(acks) * created
        if len(lat) != expected:
            errors.append("%d of %d events delivered" % (len(lat), expected))
    finally:
        await ws.close()
    return {"events": len(lat), "expected": expected, "puts": len(acks),
            "p50": pct_ms(lat, 0.50), "p99": pct_ms(lat, 0.99),
            "max": lat[-1] * 1000.0 if lat else float("nan"), "client_cpu": cpu,
            "errors": len(errors), "error": errors[0] if errors else None}


async def watch_idle_rss(server, client, args, run_id):
    """--idle-watchers watchers, one key each; RSS growth per watcher.  The baseline has
    the streams open with one watcher each."""
    ws = WatchStreams(server.endpoint)
    key = (PREFIX + b"idle/%s/" % run_id + b"%06d").__mod__
    errors = []
    try:
        calls = [ws.open() for _ in range(args.idle_streams)]
        for i, call in enumerate(calls):
            await ws.create(call, key(i))
        base = await ws.wait_created(len(calls), START_TIMEOUT)
        await asyncio.sleep(1.0)
        rss0 = server.rss_mib()
        for i in range(len(calls), args.idle_watchers):
            await ws.create(calls[i % len(calls)], key(i))
        created = await ws.wait_created(args.idle_watchers, START_TIMEOUT)
        await asyncio.sleep(1.0)
        rss1 = server.rss_mib()
        if created < args.idle_watchers:
            errors.append("%d of %d watchers created (%s)" % (created, args.idle_watchers,
                                                              ws.error))
    finally:
        await ws.close()
    added = created - base
    per = ((rss1 - rss0) * 1024 * 1024 / added
           if rss0 is not None and rss1 is not None and added > 0 else None)
    return {"watchers": created, "rss0": rss0, "rss1": rss1, "per_watcher": per,
            "errors": len(errors), "error": errors[0] if errors else None}


WATCH_WORKLOADS = [("watch-latency", watch_latency), ("watch-idle-rss", watch_idle_rss)]


def describe_watch(name, r):
    if name == "watch-latency":
        text = ("p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  %d/%d events  client CPU %.0f %%"
                % (r["p50"], r["p99"], r["max"], r["events"], r["expected"],
                   r["client_cpu"] * 100))
    elif r["per_watcher"] is None:
        text = "%d watchers, RSS unknown (not started by us)" % r["watchers"]
    else:
        text = "%d watchers, RSS %.1f -> %.1f MiB: %.0f bytes per watcher" % (
            r["watchers"], r["rss0"], r["rss1"], r["per_watcher"])
    if r["errors"]:
        text += "  (%d errors, first: %s)" % (r["errors"], r["error"])
    return text



async def bench_server(server, args):
    run_id = b"%x" % random.getrandbits(32)
    client = Client(server.endpoint)
    results = {}
    def show(name):
        r = results[name]
        extra = "".join("  %s/op %.2f" % kv for kv in sorted(r.get("per_op", {}).items()))
        if r.get("cpu_us") is not None:
            extra = "  server CPU %.0f us/op" % r["cpu_us"] + extra
        if r.get("client_cpu_us") is not None:
            extra = "  client CPU %.0f us/op" % r["client_cpu_us"] + extra
        print("  %-7s %-9s %9.0f ops/s  p50 %7.2f ms  p99 %7.2f ms%s%s"
              % (server.name, name, r["ops_s"], r["p50"], r["p99"], extra,
                 "  (%d errors, first: %s)" % (r["errors"], r["error"])
                 if r["errors"] else ""), flush=True)
    try:
        await populate(client, args, run_id)
        ops = dict(make_workloads(client, args, run_id))
        for name, op in ops.items():
            if args.workloads and name not in args.workloads:
                continue
            cpu0, counters0 = server.cpu_seconds(), server.counters()
            client_cpu0 = time.process_time()
            results[name] = await run_workload(op, args.seconds, args.concurrency,
                                               args.warmup)
            client_cpu1 = time.process_time()
            cpu1, counters1 = server.cpu_seconds(), server.counters()
            r = results[name]
            n = max(r["total_ops"], 1)
            r["cpu_us"] = (cpu1 - cpu0) * 1e6 / n if cpu0 is not None else None
            r["client_cpu_us"] = (client_cpu1 - client_cpu0) * 1e6 / n
            r["per_op"] = {k: (counters1[k] - v) / n for k, v in counters0.items()
                           if k in counters1}
            show(name)
        if not args.workloads or "mixed" in args.workloads:
            results.update(await run_mixed(ops, args))
            show("mixed-put")
            show("mixed-get")
        for name, workload in WATCH_WORKLOADS:
            if args.workloads and name not in args.workloads:
                continue
            results[name] = await workload(server, client, args, run_id)
            print("  %-7s %-14s %s" % (server.name, name,
                                       describe_watch(name, results[name])), flush=True)
    finally:
        await client.close()
    return results


# ---------------------------------------------------------------------------------------

def print_table(results, order):
    names = [n for n in ("put", "get", "range", "mixed-put", "mixed-get")
             if any(n in results.get(s, {}) for s in order)]
    head = "%-9s" % "workload"
    for s in order:
        head += " | %12s %8s %8s %9s" % (s + " ops/s", "p50 ms", "p99 ms", "CPU us/op")
    both = "etcd" in results and "adapter" in results
    if both:
        head += " | %13s" % "adapter/etcd"
    print(head)
    print("-" * len(head))
    for n in names:
        line = "%-9s" % n
        for s in order:
            r = results.get(s, {}).get(n)
            if r is None:
                line += " | %12s %8s %8s %9s" % ("-", "-", "-", "-")
            else:
                cpu = r.get("cpu_us")
                line += " | %12.0f %8.2f %8.2f %9s" % (
                    r["ops_s"], r["p50"], r["p99"], "%.0f" % cpu if cpu is not None else "-")
        if both:
            e, a = results["etcd"].get(n), results["adapter"].get(n)
            if e and a and e["ops_s"] > 0:
                line += " | %12.2fx" % (a["ops_s"] / e["ops_s"])
            else:
                line += " | %13s" % "-"
        print(line)


def print_watch_tables(results, order, args):
    both = "etcd" in results and "adapter" in results

    def row(name, fmt, cells, blank):
        r = results.get(name, {}).get(workload)
        print("%-8s | " % name + (fmt % cells(r) if r is not None else blank))

    workload = "watch-latency"
    if any(workload in results.get(s, {}) for s in order):
        print("watch-latency: %d watchers on one prefix over %d streams, %g puts/s for "
              "%g s; latency = put acknowledged -> event received"
              % (args.watchers, args.watch_streams, args.watch_rate, args.seconds))
        head = "%-8s | %17s %9s %9s %9s %11s" % ("server", "events", "p50 ms", "p99 ms",
                                                 "max ms", "client CPU")
        print(head)
        print("-" * len(head))
        for name in order:
            row(name, "%8d/%-8d %9.2f %9.2f %9.2f %10.0f%%",
                lambda r: (r["events"], r["expected"], r["p50"], r["p99"], r["max"],
                           r["client_cpu"] * 100), "-")
        e, a = (results.get(n, {}).get(workload) for n in ("etcd", "adapter"))
        if both and e and a and e["p50"] > 0 and e["p99"] > 0:
            print("adapter/etcd: p50 %.2fx, p99 %.2fx, max %.2fx"
                  % (a["p50"] / e["p50"], a["p99"] / e["p99"], a["max"] / e["max"]))
        print()
    workload = "watch-idle-rss"
    if any(workload in results.get(s, {}) for s in order):
        print("watch-idle-rss: %d idle watchers (one key each) over %d streams; RSS "
              "growth from one watcher per stream to all"
              % (args.idle_watchers, args.idle_streams))
        head = "%-8s | %9s %14s %13s %18s" % ("server", "watchers", "RSS MiB before",
                                             "RSS MiB after", "bytes per watcher")
        print(head)
        print("-" * len(head))
        for name in order:
            row(name, "%9d %14.1f %13.1f %18.0f",
                lambda r: (r["watchers"], r["rss0"] or 0, r["rss1"] or 0,
                           r["per_watcher"] or 0), "-")
        e, a = (results.get(n, {}).get(workload) for n in ("etcd", "adapter"))
        if both and e and a and e["per_watcher"] and a["per_watcher"]:
            print("adapter/etcd: %.2fx" % (a["per_watcher"] / e["per_watcher"]))
        print()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0,
                   help="measured duration of each workload (default 5)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="unmeasured run-in before each workload (default 0.5 s)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="calls in flight (default 16)")
    p.add_argument("--value-size", type=int, default=256, help="bytes per value (256)")
    p.add_argument("--writers", type=int, default=32,
                   help="mixed: put calls in flight (32)")
    p.add_argument("--readers", type=int, default=4,
                   help="mixed: get calls in flight at the same time (4)")
    p.add_argument("--only", choices=("etcd", "adapter"),
                   help="benchmark only one of the two servers")
    p.add_argument("--workload", dest="workloads", action="append",
                   choices=("put", "get", "range", "mixed", "watch-latency",
                            "watch-idle-rss"),
                   help="run only this workload (repeatable)")
    p.add_argument("--watchers", type=int, default=1000,
                   help="watch-latency: watchers on the prefix (1000)")
    p.add_argument("--watch-streams", type=int, default=10,
                   help="watch-latency: Watch streams they are spread over (10)")
    p.add_argument("--watch-rate", type=float, default=10.0,
                   help="watch-latency: puts per second (10)")
    p.add_argument("--idle-watchers", type=int, default=10000,
                   help="watch-idle-rss: idle watchers (10000)")
    p.add_argument("--idle-streams", type=int, default=100,
                   help="watch-idle-rss: Watch streams they are spread over (100)")
    p.add_argument("--adapter-endpoint", metavar="HOST:PORT",
                   help="benchmark an already-running adapter instead of starting one")
    p.add_argument("--etcd-endpoint", metavar="HOST:PORT",
                   help="benchmark an already-running etcd instead of starting one")
    p.add_argument("--store", metavar="URL",
                   help="--store for the adapter we start (default: the adapter's default)")
    p.add_argument("--etcd-data-parent", metavar="DIR",
                   help="where etcd's temporary data dir goes (default: the system temp "
                        "dir; /dev/shm takes fsync cost out of etcd's figures)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    order = [args.only] if args.only else ["etcd", "adapter"]
    servers = {}

    def cleanup():
        for s in servers.values():
            s.cleanup()

    atexit.register(cleanup)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    results = {}
    rss = {}
    failed_start = False
    try:
        print("machine: %d CPUs; client: grpcio %s, 1 connection, %d calls in flight, "
              "%.1f s per workload (+%.1f s warm-up), %d-byte values"
              % (os.cpu_count() or 0, grpc.__version__, args.concurrency, args.seconds,
                 args.warmup, args.value_size), flush=True)
        for name in order:
            if name == "etcd":
                server = Etcd(args.etcd_endpoint, args.etcd_data_parent)
            else:
                server = Adapter(args.adapter_endpoint, args.store)
            servers[name] = server
            try:
                server.start()
            except RuntimeError as exc:
                print("%s: could not start: %s" % (name, exc), file=sys.stderr)
                server.cleanup()
                results[name] = {}
                failed_start = True
                continue
            where = ("external" if server.proc is None
                     else "started by us, pid %d, log in %s" % (server.proc.pid, server.tmp))
            print("%s %s on %s (%s)" % (name, server_version(server.endpoint),
                                        server.endpoint, where), flush=True)
            results[name] = asyncio.run(bench_server(server, args))
            rss[name] = server.rss_mib()
            server.cleanup()    # the next server gets the CPU to itself
        print()
        if any(n in r for r in results.values()
               for n in ("put", "get", "range", "mixed-put", "mixed-get")):
            print_table(results, order)
            print()
        print_watch_tables(results, order, args)
        for name in order:
            if rss.get(name) is not None:
                print("%s RSS after its workloads: %.1f MiB" % (name, rss[name]))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()
    failed = [(s, n) for s, r in results.items() for n, x in r.items() if x["errors"]]
    return 1 if failed or failed_start else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Cross-instance watch latency and idle database load of the SQL stores.

Starts two etcd-adapters (twistd, as bench.py does) on one database, opens a watch on a
prefix on adapter A, and puts keys under the prefix through adapter B at ``--rate`` puts/s;
latency = B acknowledged the put -> A's watcher received its event (also from the moment
the put was sent).  Then stops B and measures the database queries per second of adapter A
alone while idle (``--idle`` seconds):

* MariaDB/MySQL: ``SHOW GLOBAL STATUS LIKE 'Questions'`` before/after (server-wide: other
  clients of the server count too; a baseline of the same length with no adapter running
  is measured first and printed beside it);
* PostgreSQL: ``pg_stat_database`` (xact_commit + xact_rollback) of the store's database;
  also server-wide counters of that one database, so use a database of its own;
* SQLite: not measured (no server).

Usage:
  python bench/sql_watch.py --store mysql://root@127.0.0.1:3306/etcdbench
  python bench/sql_watch.py --store postgresql://postgres@127.0.0.1:5432/etcdbench \\
      --puts 300 --rate 30 --idle 10

The database must exist (the adapters create their tables).
"""

import argparse
import os
import sys
import threading
import time
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import bench  # noqa: E402
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402

PREFIX = b"/sql-watch/"


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    i = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[i]


class WatchReader(object):
    """A watch of PREFIX on one adapter; records when each key's event arrived."""

    def __init__(self, endpoint):
        import queue
        self.channel = grpc.insecure_channel(endpoint)
        self.requests = queue.Queue()
        self.arrived = {}
        self.created = threading.Event()
        call = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc.WatchResponse.FromString)
        self.requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX[:-1] + bytes([PREFIX[-1] + 1]))))
        self.call = call(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()
        if not self.created.wait(10):
            raise RuntimeError("watch not created")

    def _read(self):
        try:
            for r in self.call:
                now = time.monotonic()
                if r.created:
                    self.created.set()
                for e in r.events:
                    self.arrived.setdefault(e.kv.key, now)
        except grpc.RpcError:
            pass

    def close(self):
        self.call.cancel()
        self.requests.put(None)
        self.channel.close()


def idle_counter(url):
    """A function returning the database's query counter now, or None (SQLite)."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("mysql", "tidb"):
        import pymysql
        conn = pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                               user=parts.username or "root", password=parts.password or "",
                               autocommit=True)

        def read():
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            # minus this query itself
            return int(cur.fetchone()[1]) - 1
        return read, "MariaDB/MySQL Questions (server-wide)"
    if scheme in ("postgresql", "postgres"):
        import psycopg
        db = parts.path.lstrip("/")
        conn = psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                               user=parts.username or "postgres", dbname="postgres",
                               autocommit=True)

        def read():
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                               "WHERE datname = %s", (db,)).fetchone()
            return int(row[0])
        return read, "PostgreSQL transactions of database %s" % db
    return None, None


def rate_over(read, seconds):
    # PostgreSQL's statistics reach pg_stat_database up to ~0.5-1 s late: wait them out.
    before = read()
    time.sleep(seconds)
    after = read()
    return (after - before) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, metavar="URL")
    p.add_argument("--puts", type=int, default=300)
    p.add_argument("--rate", type=float, default=30.0, help="puts per second (30)")
    p.add_argument("--idle", type=float, default=10.0, help="idle seconds measured (10)")
    args = p.parse_args()

    read, what = idle_counter(args.store)
    baseline = None
    if read is not None:
        baseline = rate_over(read, args.idle)

    a = bench.Adapter(store=args.store)
    b = bench.Adapter(store=args.store)
    a.name, b.name = "adapter-a", "adapter-b"
    try:
        a.start()
        b.start()
        watch = WatchReader(a.endpoint)
        sent, acked = {}, {}
        with grpc.insecure_channel(b.endpoint) as channel:
            put = channel.unary_unary("/etcdserverpb.KV/Put",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=rpc.PutResponse.FromString)
            start = time.monotonic()
            for i in range(args.puts):
                due = start + i / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                key = PREFIX + b"%06d" % i
                sent[key] = time.monotonic()
                put(rpc.PutRequest(key=key, value=b"x" * 64), timeout=10)
                acked[key] = time.monotonic()
        deadline = time.monotonic() + 10
        while len(watch.arrived) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        watch.close()
        missing = len(sent) - len(watch.arrived)
        from_ack = [(watch.arrived[k] - acked[k]) * 1000 for k in sent if k in watch.arrived]
        from_send = [(watch.arrived[k] - sent[k]) * 1000 for k in sent
                     if k in watch.arrived]
        print("store %s" % args.store)
        print("cross-instance put (adapter B) -> event (adapter A), %d puts at %.0f/s:"
              % (args.puts, args.rate))
        print("  from ack:  p50 %.1f ms  p99 %.1f ms  max %.1f ms" % (
            percentile(from_ack, 50), percentile(from_ack, 99), max(from_ack)))
        print("  from send: p50 %.1f ms  p99 %.1f ms  max %.1f ms" % (
            percentile(from_send, 50), percentile(from_send, 99), max(from_send)))
        if missing:
            print("  %d events MISSING" % missing)
        b.cleanup()
        if read is not None:
            time.sleep(1.0)
            idle = rate_over(read, args.idle)
            print("idle, one adapter: %.1f queries/s -- %s; baseline without adapters "
                  "%.1f/s" % (idle, what, baseline))
        return 1 if missing else 0
    finally:
        a.cleanup()
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())

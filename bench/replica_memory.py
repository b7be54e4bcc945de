#!/usr/bin/env python3
"""What a SQL adapter's replica costs: memory per key and per retained version, and the
time to load it at start-up.

Fills a fresh database (through the store's own schema, rows written in bulk the way the
adapter writes them: one revision per key version) and then loads it exactly as an adapter
starting on it does (``etcdadapter.store.sql.replica.load`` in one read transaction),
measuring the load's wall time and the memory the loaded replica holds (tracemalloc:
Python objects only, the figure that grows with the data).

Cases (``--case``, repeatable; default all):
  100k-1k      100,000 keys with 1 KiB values, compacted to the head (the steady state
               with automatic compaction: one version per key)
  1m-small     1,000,000 keys of ~20 bytes with 8-byte values, compacted
  100k-hist    100,000 keys x 5 versions of 100-byte values, not compacted (retained
               history: versions and their watch-log entries)

Usage:
  python bench/replica_memory.py                           # SQLite file in a temp dir
  python bench/replica_memory.py --store mysql://root@127.0.0.1:3306/bench_replica
  python bench/replica_memory.py --store postgresql://postgres@127.0.0.1/bench_replica

The MySQL/PostgreSQL database must exist and is emptied first (its etcd_* tables).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from etcdadapter.store.sql import replica, schema  # noqa: E402
from etcdadapter.store.sql.runner import Runner, Session  # noqa: E402
from etcdadapter.store.urls import open_store  # noqa: E402

CASES = {
    # name: (keys, versions per key, key bytes pattern, value bytes, compact)
    "100k-1k": (100000, 1, b"/apisix/routes/%012d", 1024, True),
    "1m-small": (1000000, 1, b"/k/%016d", 8, True),
    "100k-hist": (100000, 5, b"/apisix/upstreams/%010d", 100, False),
}
ROWS = 2000


def session_for(url):
    store = open_store(url)
    d = store.dialect
    return d, Session(Runner(d, 1, reactor=None))


def fill(d, s, keys, versions, pattern, value_size, compact):
    def drop(tx):
        for t in schema.TABLES:
            tx.run("DROP TABLE IF EXISTS " + t)
    s.transaction("ddl", drop)
    schema.migrate(s, d, 1)
    value = b"x" * value_size
    rev = 1
    for v in range(versions):
        for start in range(0, keys, ROWS):
            log_rows = []
            for i in range(start, min(start + ROWS, keys)):
                rev += 1
                create = rev if v == 0 else 2 + i
                prev = (0, 0) if v == 0 else (rev - keys, 0)
                log_rows.append((rev, 0, pattern % i, create, v + 1, value, 0) + prev)

            def write(tx, log_rows=log_rows, rev=rev):
                tx.many("INSERT INTO etcd_log (revision, sub, name, create_revision, "
                        "version, value, lease, prev_revision, prev_sub) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s)", log_rows)
                tx.many(d.upsert("etcd_current", ["name", "revision", "sub", "version",
                                                  "lease"], "name"),
                        [(r[2], r[0], 0, r[4], 0) for r in log_rows])
                tx.run("UPDATE etcd_meta SET revision = %s WHERE id = 1", (rev,))
            s.transaction("write", write)
    if compact:
        s.transaction("write", lambda tx: tx.run(
            "UPDATE etcd_meta SET compact_revision = revision WHERE id = 1"))
    return rev


def measure(d, s):
    """(replica, seconds a load takes, bytes it holds): timed without tracemalloc (it
    slows allocation down), measured with it in a second load."""
    t0 = time.monotonic()
    ks = s.transaction("read", replica.load)
    seconds = time.monotonic() - t0
    del ks
    tracemalloc.start()
    ks = s.transaction("read", replica.load)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return ks, seconds, current


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="database URL (default: a SQLite file in a temp dir)")
    p.add_argument("--case", dest="cases", action="append", choices=sorted(CASES))
    args = p.parse_args(argv)
    tmp = None
    url = args.store
    if url is None:
        tmp = tempfile.mkdtemp(prefix="etcdadapter-replica-")
        url = "sqlite://" + os.path.join(tmp, "etcd.db") + "?synchronous=OFF"
    try:
        d, s = session_for(url)
        print("database: %s" % d.describe())
        print("%-10s %9s %9s %10s %12s %14s %10s" % (
            "case", "keys", "versions", "load s", "replica MiB", "bytes/version",
            "value B"))
        for name in args.cases or list(CASES):
            keys, versions, pattern, value_size, compact = CASES[name]
            t0 = time.monotonic()
            fill(d, s, keys, versions, pattern, value_size, compact)
            filled = time.monotonic() - t0
            ks, seconds, size = measure(d, s)
            n = sum(len(h) for h in ks.keys.values())
            assert len(ks.keys) == keys and n == (1 if compact else versions) * keys
            print("%-10s %9d %9d %10.2f %12.1f %14.0f %10d   (filled in %.0f s; "
                  "its own estimate %.1f MiB)"
                  % (name, keys, n, seconds, size / 2 ** 20, size / n, value_size, filled,
                     ks.size() / 2 ** 20), flush=True)
            del ks
        s.drop()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

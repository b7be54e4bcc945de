#!/usr/bin/env python3
"""How long writers stall while a SQL store compacts a big log.

Fills a fresh store with ``--keys`` keys x ``--versions`` versions (txns of 100 puts; with
the defaults 100,000 log rows, 90% of them superseded) and deletes every tenth key, then
compacts to the current revision (``physical``: the call returns once the rows are gone)
while one writer puts its own keys back to back through the same store.  Prints the
compaction's duration and the writer's put latencies during it (max, p99, p50, count),
next to the same writer's latencies without a compaction.

The store runs in this process (its thread pool and change feed on a reactor thread), so
the figures are the database's lock waits, not gRPC.  It uses only the store API, so the
same script measures an older checkout: ``PYTHONPATH=/path/to/old/tree python
bench/sql_compact.py ...``.

Usage:
  python bench/sql_compact.py --store mysql://root@127.0.0.1:3306/etcdbench
  python bench/sql_compact.py --store postgresql://postgres@127.0.0.1:5432/etcdbench
  python bench/sql_compact.py --store sqlite:///tmp/etcdbench.db
  python bench/sql_compact.py --store memory://        (the memory store, for comparison)

The database must exist and should be empty (the store creates its tables).
"""

import argparse
import os
import sys
import threading
import time

if "PYTHONPATH" not in os.environ:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.threads import blockingCallFromThread  # noqa: E402

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402
from etcdadapter.store.urls import open_store  # noqa: E402

VALUE = b"v" * 100
TXN_PUTS = 100


def call(f, *args):
    return blockingCallFromThread(reactor, lambda: defer.maybeDeferred(f, *args))


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def fill(store, keys, versions):
    names = [b"/bench/compact/%08d" % i for i in range(keys)]
    for v in range(versions):
        for i in range(0, keys, TXN_PUTS):
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=VALUE))
                   for k in names[i:i + TXN_PUTS]]
            call(store.txn, rpc.TxnRequest(success=ops))
    for i in range(0, keys, 10):
        call(store.delete_range, rpc.DeleteRangeRequest(key=names[i]))


class Writer(object):
    """Puts back to back (one in flight) until stopped; records each put's latency."""

    def __init__(self, store):
        self.store = store
        self.latencies = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            t = time.monotonic()
            call(self.store.put, rpc.PutRequest(key=b"/bench/writer/%d" % (n % 1000),
                                               value=VALUE))
            self.latencies.append(time.monotonic() - t)
            n += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self):
        ms = [x * 1000 for x in self.latencies]
        return "puts %5d   max %7.1f ms   p99 %6.1f ms   p50 %5.1f ms" % (
            len(ms), max(ms) if ms else float("nan"), percentile(ms, 99),
            percentile(ms, 50))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, metavar="URL")
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--versions", type=int, default=10)
    p.add_argument("--baseline", type=float, default=3.0,
                   help="seconds of writes measured without compaction (3)")
    args = p.parse_args()

    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                     daemon=True).start()
    store = open_store(args.store, reactor=reactor) if not args.store.startswith(
        "memory:") else open_store(args.store)
    call(store.start)
    try:
        t = time.monotonic()
        fill(store, args.keys, args.versions)
        print("filled: %d keys x %d versions, revision %d, in %.1fs" % (
            args.keys, args.versions, store.revision, time.monotonic() - t))
        with Writer(store) as w:
            time.sleep(args.baseline)
        print("no compaction:  %s" % w.summary())
        with Writer(store) as w:
            time.sleep(0.2)
            t = time.monotonic()
            call(store.compact, store.revision, True)
            took = time.monotonic() - t
            time.sleep(0.2)
        print("compaction:     %s   (compaction took %.2fs)" % (w.summary(), took))
    finally:
        call(store.stop)
        reactor.callFromThread(reactor.stop)


if __name__ == "__main__":
    main()

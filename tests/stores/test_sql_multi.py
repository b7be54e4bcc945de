"""Several adapter processes on one database (MariaDB, PostgreSQL): twistd processes with
the same ``--store`` URL, driven over gRPC.

* concurrent compare-and-swap increments of one counter key from every instance lose no
  update: each client reads the counter, then a Txn compares its mod_revision and puts
  value + 1, and retries on a lost race; the final value is the number of successful
  swaps;
* meanwhile every instance also writes keys of its own; a watcher on each instance, opened
  before the writes, sees every write made on any instance -- in revision order, exactly
  once, with the key and value the writer was acknowledged for;
* every instance's watchers see the same revision sequence (the whole list is compared),
  and it is exactly the revisions the writers were acknowledged for, without a gap.

A fresh database (on PostgreSQL a fresh schema) per test, dropped afterwards.
"""

import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support.multi import (COUNTER, INCREMENTS, KV, WAIT, Watcher,  # noqa: F401 (db_url)
                           db_url, ok, run_incrementers, start_adapters)
from support.stores import create_database

pytestmark = pytest.mark.adapter


@pytest.mark.parametrize("instances", [2, 3])
def test_instances_share_one_database(db_url, request, instances):
    adapters = start_adapters(db_url, instances, request)
    with servers.GrpcClient(adapters[0].endpoint) as c:
        base = ok(c, "Put", rpc.PutRequest(key=COUNTER, value=b"0"),
                  rpc.PutResponse).header.revision
    # Each instance: a watcher of the prefix from the counter's creation on (history,
    # then live), and one from the next revision (live only); both opened before any
    # other write.
    watchers = []
    try:
        for a in adapters:
            watchers.append(Watcher(a, key=b"/multi/", range_end=b"/multi0",
                                    start_revision=base))
            watchers.append(Watcher(a, key=b"/multi/", range_end=b"/multi0",
                                    start_revision=base + 1))
        acked, elapsed = run_incrementers(adapters)
        assert len([a for a in acked if a[1] == COUNTER]) == instances * INCREMENTS

        # No update lost: the counter counts every acknowledged swap.
        total = instances * INCREMENTS
        with servers.GrpcClient(adapters[-1].endpoint) as c:
            kv = ok(c, "Range", rpc.RangeRequest(key=COUNTER), rpc.RangeResponse).kvs[0]
        assert kv.value == b"%d" % total
        assert kv.version == total + 1

        # Every acknowledged write has its own revision; together they are every
        # revision after ``base`` (failed compares write nothing).
        acked.sort()
        last = acked[-1][0]
        assert [a[0] for a in acked] == list(range(base + 1, last + 1))
        expected = [(rev, 0, key, value) for rev, key, value in acked]   # 0: PUT
        first = (base, 0, COUNTER, b"0")
        for i, w in enumerate(watchers):
            w.wait_for(last)
        time.sleep(0.3)                      # nothing more (no duplicates) may come
        for i, w in enumerate(watchers):
            assert w.error is None, w.error
            want = [first] + expected if i % 2 == 0 else expected
            assert w.events == want, "watcher %d on instance %d" % (i % 2, i // 2)
        # The very same revision sequence on every instance (asserted as lists).
        sequences = [w.revisions() for w in watchers[::2]]
        assert all(s == sequences[0] for s in sequences)
        assert all(w.revisions() == sequences[0][1:] for w in watchers[1::2])
        print("%d instances: %d writes (%d swaps) in %.2fs" % (
            instances, len(acked), total, elapsed))
    finally:
        for w in watchers:
            w.close()


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_instances_starting_together_on_a_fresh_database(kind):
    """Several stores creating the schema of one fresh database at the same moment (as
    adapters started together do): every one starts, on one schema, at one revision.
    (PostgreSQL failed here: concurrent CREATE TABLE IF NOT EXISTS of one table raises a
    unique violation on pg_type.)"""
    from twisted.internet import defer
    from etcdadapter.store.urls import open_store
    from support import stores
    url, drop = create_database(kind)
    opened = []
    try:
        for _ in range(4):
            opened.append(open_store(url, reactor=stores.reactor()))
        stores.call(lambda: defer.gatherResults([s.start() for s in opened],
                                                consumeErrors=True))
        assert len({s.revision for s in opened}) == 1
    finally:
        for s in opened:
            if s._started:
                stores.call(s.stop)
        drop()


COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def _compactions(server):
    """(mode, revision) of every compaction this adapter's auto compactor made."""
    import re
    return [(m.group(1), int(m.group(2))) for m in re.finditer(
        r"auto compaction \((\w+)\): compacted to revision (\d+)", server.log_text())]


@pytest.mark.parametrize("mode,args,target", [
    # keep 10 revisions, checked every 300 ms: 31 - 10
    ("revision", ["--auto-compaction-mode", "revision", "--auto-compaction-retention",
                  "10", "--auto-compaction-check-interval", "300ms"], 21),
    # keep 1.5 s (checks every 150 ms): once the writes are that old, the last of them
    ("periodic", ["--auto-compaction-retention", "1500ms"], 31),
])
def test_auto_compaction_once_across_instances(db_url, request, mode, args, target):
    """Two adapters on one database with a short retention: the compaction to the
    target happens once (on one of them), and both then answer reads and watches below
    it with etcd's compacted errors."""
    url = db_url + ("&" if "?" in db_url else "?") + "initial_revision=1"
    adapters = start_adapters(url, 2, request, extra_args=args)
    with servers.GrpcClient(adapters[0].endpoint) as c:
        for i in range(30):                                  # revisions 2..31
            ok(c, "Put", rpc.PutRequest(key=b"/auto/%d" % (i % 3), value=b"%d" % i),
               rpc.PutResponse)

    deadline = time.monotonic() + WAIT
    clients = [servers.GrpcClient(a.endpoint) for a in adapters]
    try:
        for c in clients:
            while True:
                r = c.call(KV + "Range", rpc.RangeRequest(key=b"/auto/0",
                                                          revision=target - 1),
                           rpc.RangeResponse)
                if not r.ok:
                    break
                assert time.monotonic() < deadline, "not compacted to %d" % target
                time.sleep(0.05)
            assert (r.code, r.details) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
            # ... at the target itself everything is there
            r = ok(c, "Range", rpc.RangeRequest(key=b"/auto/", range_end=b"/auto0",
                                                revision=target), rpc.RangeResponse)
            assert [(kv.key, kv.mod_revision) for kv in r.kvs] == [
                (b"/auto/%d" % k, max(rev for rev in range(2, target + 1)
                                      if (rev - 2) % 3 == k)) for k in range(3)]
        for a in adapters:
            w = Watcher(a, key=b"/auto/", range_end=b"/auto0", start_revision=target - 1)
            try:
                deadline = time.monotonic() + WAIT
                while not any(r.canceled for r in w.responses):
                    assert time.monotonic() < deadline, w.responses
                    time.sleep(0.02)
                r = [r for r in w.responses if r.canceled][0]
                # etcd's cancel of a watcher behind a compaction: compact_revision, no
                # reason text, header revision 0
                assert (r.compact_revision, r.cancel_reason, r.header.revision) == \
                    (target, "", 0)
                assert w.events == []
            finally:
                w.close()
    finally:
        for c in clients:
            c.close()
    time.sleep(1.0)                       # later checks find nothing more to do
    made = [_compactions(a) for a in adapters]
    # One adapter compacted to the target (the other found it done, or skipped its
    # check having seen it), none went further, none failed.
    assert sum(m.count((mode, target)) for m in made) == 1, made
    assert max(rev for m in made for _mode, rev in m) == target, made
    for a in adapters:
        assert "auto compaction (%s) to revision" % mode not in a.log_text(), \
            a.log_tail()

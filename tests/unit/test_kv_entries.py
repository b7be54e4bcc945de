"""The cache of encoded RangeResponse.kvs entries (mvcc._KVEntries): ranges answered from it
equal ranges built field by field, whatever the cache held before, and it stays within
its budget."""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store import mvcc
from etcdadapter.store.base import KV
from etcdadapter.store.memory import MemoryStore

from support.fired import result


def _built(kvs):
    resp = rpc.RangeResponse()
    mvcc._add_kvs(resp.kvs, kvs)
    return resp


def test_entries_equal_the_fields_and_stay_within_the_budget():
    cache = mvcc._KVEntries(budget=2000)
    kvs = [KV(b"k%03d" % i, 5 + i, 9 + i, i % 3, b"v" * (i % 50), i % 2 * 7)
           for i in range(200)]
    for start in range(0, 200, 7):
        part = kvs[start:start + 25]
        resp = rpc.RangeResponse()
        resp.MergeFromString(cache.join(part))
        assert resp == _built(part)
        assert 0 < cache.size <= cache.budget
        assert cache.size == sum(len(e) for e in cache._entries.values())
    # A tombstone and a zero-lease, empty-value version: zero fields omitted, as upb does.
    odd = [KV(b"gone", 0, 12, 0, b"", 0), KV(b"", 1, 1, 1, b"", 0)]
    resp = rpc.RangeResponse()
    resp.MergeFromString(cache.join(odd))
    assert resp == _built(odd)


def test_two_stores_in_one_process_never_see_each_others_versions():
    # The same key at the same revision holds different values in two stores: each range
    # answers its own (the cache is keyed by the whole version).
    a, b = MemoryStore(initial_revision=1), MemoryStore(initial_revision=1)
    for store, value in ((a, b"from-a"), (b, b"from-b")):
        result(store.start())
        for i in range(3):
            result(store.put(rpc.PutRequest(key=b"p/%d" % i, value=value)))
    req = rpc.RangeRequest(key=b"p/", range_end=b"p0")
    for _ in range(2):
        got_a, got_b = result(a.range(req)), result(b.range(req))
        assert [kv.value for kv in got_a.kvs] == [b"from-a"] * 3
        assert [kv.value for kv in got_b.kvs] == [b"from-b"] * 3
        assert [kv.mod_revision for kv in got_a.kvs] == [kv.mod_revision for kv in got_b.kvs]

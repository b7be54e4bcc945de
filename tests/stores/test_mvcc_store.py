"""The stores + mvcc: revision semantics as etcd 3.4/3.5 has them (``etcdserver/apply.go``
and ``mvcc/kvstore_txn.go`` in etcd's repository, not this one; etcdadapter/store/mvcc.py
says where it follows them).

Every test taking ``s`` runs on each store (memory, sqlite, mariadb, postgresql; see
tests/support/stores.py).  The memory store's Deferreds are already fired and the SQL
stores are wrapped so that theirs are too, so these tests are plain synchronous code.
Stores start at revision 1 like a fresh etcd, so the numbers below are the ones etcd
reports for the same sequence of requests.  Tests of the memory store's internals take ``mem``.
"""

import time

import pytest

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.pb.mvccpb import kv_pb2
from etcdadapter.store import keyspace, memory, mvcc
from etcdadapter.store.base import DELETE, KV, PUT, Change, Event, StoreStatus
from etcdadapter.store.memory import MemoryStore
from support.fired import error_of, result
from support import stores
from support.stores import is_memory, raw, settle


# -- helpers ---------------------------------------------------------------------------

@pytest.fixture
def s(make_store):
    return make_store(initial_revision=1)


@pytest.fixture
def mem():
    return MemoryStore(initial_revision=1)


def put(s, key, value=b"", **kw):
    return result(s.put(rpc.PutRequest(key=key, value=value, **kw)))


def get(s, key, **kw):
    return result(s.range(rpc.RangeRequest(key=key, **kw)))


def delete(s, key, **kw):
    return result(s.delete_range(rpc.DeleteRangeRequest(key=key, **kw)))


def txn(s, compare=(), success=(), failure=()):
    return result(s.txn(rpc.TxnRequest(compare=compare, success=success,
                                       failure=failure)))


def op_put(key, value=b"", **kw):
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, **kw))


def op_range(key, **kw):
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, **kw))


def op_delete(key, **kw):
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, **kw))


def op_txn(compare=(), success=(), failure=()):
    return rpc.RequestOp(request_txn=rpc.TxnRequest(compare=compare, success=success,
                                                    failure=failure))


C = rpc.Compare


def cmp(key, target, result_, range_end=b"", **union):
    return rpc.Compare(key=key, target=target, result=result_, range_end=range_end,
                       **union)


def pkv(key, create, mod, version, value=b"", lease=0):
    return kv_pb2.KeyValue(key=key, create_revision=create, mod_revision=mod,
                           version=version, value=value, lease=lease)


def keys(resp):
    return [kv.key for kv in resp.kvs]


def header_only(rev):
    h = rpc.ResponseHeader()
    h.revision = rev
    return h


def fill(s):
    """a v3 (rev 2..4), b v1 (5), c v2 (6,7), d v1 (8): current revision 8."""
    for k, n in ((b"a", 3), (b"b", 1), (b"c", 2), (b"d", 1)):
        for i in range(n):
            put(s, k, k + str(i).encode())
    assert s.revision == 8


# -- revisions ---------------------------------------------------------------------------

def test_initial_revision_from_wall_clock():
    # Microseconds: one write per millisecond no longer outruns the next start's seed.
    before = time.time_ns() // 1000
    st = MemoryStore()
    after = time.time_ns() // 1000
    assert before <= st.revision <= after < 2 ** 53       # exact in a double (Lua, JS)
    assert st.compact_revision == -1
    r = get(st, b"x")
    assert r.header.revision == st.revision
    assert put(st, b"x", b"1").header.revision == st.revision


def test_initial_revision_override(s):
    assert s.revision == 1
    assert s.compact_revision == -1
    r = get(s, b"nothing")
    assert r == rpc.RangeResponse(header=header_only(1))
    st = result(s.status())
    assert st.revision == 1 and st.compact_revision == -1
    assert isinstance(st, StoreStatus)


def test_put_bumps_even_with_same_value(s):
    assert put(s, b"k", b"v").header.revision == 2
    assert put(s, b"k", b"v").header.revision == 3
    assert put(s, b"other", b"v").header.revision == 4
    assert s.revision == 4
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 3, 2, b"v")]


def test_delete_nothing_does_not_bump(s):
    put(s, b"a", b"1")
    r = delete(s, b"zzz")
    assert r == rpc.DeleteRangeResponse(header=header_only(2))
    r = delete(s, b"b", range_end=b"c", prev_kv=True)
    assert r == rpc.DeleteRangeResponse(header=header_only(2))
    assert s.revision == 2


def test_delete_and_recreate(s):
    put(s, b"k", b"1")                 # 2
    put(s, b"k", b"2")                 # 3
    r = delete(s, b"k")                # 4
    assert r.header.revision == 4 and r.deleted == 1 and not r.prev_kvs
    assert get(s, b"k").count == 0
    put(s, b"k", b"3")                 # 5
    put(s, b"k", b"4")                 # 6
    assert list(get(s, b"k").kvs) == [pkv(b"k", 5, 6, 2, b"4")]
    # history: each revision shows the generation alive then
    assert list(get(s, b"k", revision=3).kvs) == [pkv(b"k", 2, 3, 2, b"2")]
    assert list(get(s, b"k", revision=4).kvs) == []
    assert list(get(s, b"k", revision=5).kvs) == [pkv(b"k", 5, 5, 1, b"3")]
    assert list(get(s, b"k", revision=1).kvs) == []


def test_historic_reads_report_current_revision(s):
    fill(s)
    r = get(s, b"a", revision=3)
    assert r.header.revision == 8
    assert list(r.kvs) == [pkv(b"a", 2, 3, 2, b"a1")]
    r = get(s, b"a", range_end=b"\0", revision=5)
    assert list(r.kvs) == [pkv(b"a", 2, 4, 3, b"a2"), pkv(b"b", 5, 5, 1, b"b0")]
    assert r.count == 2 and r.header.revision == 8
    assert error_of(s.range(rpc.RangeRequest(key=b"a", revision=9))) == errors.ErrFutureRev
    # revision <= 0 is "latest"
    assert list(get(s, b"a", revision=-7).kvs) == [pkv(b"a", 2, 4, 3, b"a2")]
    assert get(s, b"a", revision=8) == get(s, b"a")


# -- Range options --------------------------------------------------------------------------

def test_range_rules(s):
    for k in (b"a", b"ab", b"abc", b"b", b"\xff", b"\xff\xff"):
        put(s, k, b"v")
    assert keys(get(s, b"a", range_end=b"b")) == [b"a", b"ab", b"abc"]
    assert keys(get(s, b"ab", range_end=b"ac")) == [b"ab", b"abc"]          # prefix
    assert keys(get(s, b"ab", range_end=b"\0")) == [b"ab", b"abc", b"b", b"\xff",
                                                      b"\xff\xff"]
    assert keys(get(s, b"\0", range_end=b"\0")) == [b"a", b"ab", b"abc", b"b", b"\xff",
                                                      b"\xff\xff"]
    assert keys(get(s, b"b", range_end=b"a")) == []                          # end < key
    assert keys(get(s, b"b", range_end=b"b")) == []                          # end == key
    assert get(s, b"b", range_end=b"a").count == 0
    assert keys(get(s, b"ab")) == [b"ab"]                                    # single key
    assert keys(get(s, b"zz")) == []


def test_range_limit_more_count(s):
    fill(s)
    r = get(s, b"a", range_end=b"z", limit=2)
    assert keys(r) == [b"a", b"b"] and r.more and r.count == 4
    r = get(s, b"a", range_end=b"z", limit=4)
    assert keys(r) == [b"a", b"b", b"c", b"d"] and not r.more and r.count == 4
    r = get(s, b"a", range_end=b"z", limit=3)
    assert keys(r) == [b"a", b"b", b"c"] and r.more and r.count == 4
    r = get(s, b"a", range_end=b"z", limit=-1)
    assert keys(r) == [b"a", b"b", b"c", b"d"] and not r.more
    r = get(s, b"a", range_end=b"z", limit=1, revision=5)
    assert keys(r) == [b"a"] and r.more and r.count == 2 and r.header.revision == 8
    r = get(s, b"a", limit=1)
    assert keys(r) == [b"a"] and not r.more and r.count == 1


def test_range_sort(s):
    fill(s)
    SO, ST = rpc.RangeRequest, rpc.RangeRequest
    rng = dict(key=b"a", range_end=b"z")
    assert keys(get(s, sort_order=SO.DESCEND, **rng)) == [b"d", b"c", b"b", b"a"]
    assert keys(get(s, sort_order=SO.ASCEND, **rng)) == [b"a", b"b", b"c", b"d"]
    # ties keep key order, in both directions (as etcd 3.4.23 answered)
    assert keys(get(s, sort_target=ST.VERSION, sort_order=SO.DESCEND, **rng)) == \
        [b"a", b"c", b"b", b"d"]
    assert keys(get(s, sort_target=ST.VERSION, sort_order=SO.ASCEND, **rng)) == \
        [b"b", b"d", b"c", b"a"]
    assert keys(get(s, sort_target=ST.CREATE, sort_order=SO.DESCEND, **rng)) == \
        [b"d", b"c", b"b", b"a"]
    assert keys(get(s, sort_target=ST.MOD, sort_order=SO.DESCEND, **rng)) == \
        [b"d", b"c", b"b", b"a"]
    put(s, b"b", b"zz")                                      # 9: b mod 9, version 2
    assert keys(get(s, sort_target=ST.MOD, sort_order=SO.ASCEND, **rng)) == \
        [b"a", b"c", b"d", b"b"]
    assert keys(get(s, sort_target=ST.VALUE, sort_order=SO.DESCEND, **rng)) == \
        [b"b", b"d", b"c", b"a"]
    # NONE + target != KEY sorts ascending ...
    assert keys(get(s, sort_target=ST.MOD, **rng)) == [b"a", b"c", b"d", b"b"]
    # ... but, as in etcd, only the limit+1 keys fetched in key order (a, b, c)
    r = get(s, sort_target=ST.MOD, limit=2, **rng)
    assert keys(r) == [b"a", b"c"] and r.more and r.count == 4
    # an explicit order fetches everything first
    r = get(s, sort_target=ST.MOD, sort_order=SO.ASCEND, limit=2, **rng)
    assert keys(r) == [b"a", b"c"] and r.more
    r = get(s, sort_target=ST.MOD, sort_order=SO.DESCEND, limit=2, **rng)
    assert keys(r) == [b"b", b"d"] and r.more and r.count == 4


def test_range_sort_quirk_matches_etcd(s):
    # Verified on etcd 3.4.23: sort_target=VERSION, no order, limit 2 -> b, c (not b, d).
    fill(s)
    r = get(s, b"a", range_end=b"z", sort_target=rpc.RangeRequest.VERSION, limit=2)
    assert keys(r) == [b"b", b"c"] and r.more and r.count == 4
    r = get(s, b"a", range_end=b"z", sort_target=rpc.RangeRequest.VERSION,
            sort_order=rpc.RangeRequest.ASCEND, limit=2)
    assert keys(r) == [b"b", b"d"] and r.more and r.count == 4


def test_range_filters(s):
    fill(s)
    rng = dict(key=b"a", range_end=b"z")
    r = get(s, min_mod_revision=5, **rng)
    assert keys(r) == [b"b", b"c", b"d"] and r.count == 4          # count ignores filters
    r = get(s, max_mod_revision=5, **rng)
    assert keys(r) == [b"a", b"b"] and r.count == 4
    r = get(s, min_create_revision=6, **rng)
    assert keys(r) == [b"c", b"d"]
    r = get(s, max_create_revision=5, **rng)
    assert keys(r) == [b"a", b"b"]
    r = get(s, min_mod_revision=5, max_mod_revision=7, **rng)
    assert keys(r) == [b"b", b"c"]
    # filters fetch everything, then truncate
    r = get(s, min_mod_revision=5, limit=2, **rng)
    assert keys(r) == [b"b", b"c"] and r.more and r.count == 4
    r = get(s, min_mod_revision=5, limit=3, **rng)
    assert keys(r) == [b"b", b"c", b"d"] and not r.more and r.count == 4
    r = get(s, min_mod_revision=100, **rng)
    assert keys(r) == [] and r.count == 4
    # etcd tests "!= 0": a negative bound is a bound
    assert keys(get(s, max_mod_revision=-1, **rng)) == []
    # single key
    assert keys(get(s, b"a", min_mod_revision=5)) == []
    assert get(s, b"a", min_mod_revision=5).count == 1


def test_range_keys_only_count_only(s):
    fill(s)
    r = get(s, b"a", range_end=b"z", keys_only=True, limit=1)
    assert list(r.kvs) == [pkv(b"a", 2, 4, 3)] and r.more and r.count == 4
    r = get(s, b"a", range_end=b"z", count_only=True, limit=1, min_mod_revision=6)
    assert r == rpc.RangeResponse(header=header_only(8), count=4)
    r = get(s, b"c", count_only=True)
    assert r == rpc.RangeResponse(header=header_only(8), count=1)
    r = get(s, b"x", count_only=True)
    assert r == rpc.RangeResponse(header=header_only(8))
    r = get(s, b"a", range_end=b"z", count_only=True, revision=6)
    assert r.count == 3 and not r.kvs


# -- Put / DeleteRange -----------------------------------------------------------------

def test_put_prev_kv(s):
    r = put(s, b"k", b"1", prev_kv=True)
    assert not r.HasField("prev_kv") and r.header.revision == 2
    r = put(s, b"k", b"2", prev_kv=True)
    assert r.prev_kv == pkv(b"k", 2, 2, 1, b"1")
    delete(s, b"k")
    r = put(s, b"k", b"3", prev_kv=True)
    assert not r.HasField("prev_kv")


def test_put_ignore_value_and_lease(s):
    s.lease_grant(7, 60)
    s.lease_grant(8, 60)
    put(s, b"k", b"v", lease=7)                                    # 2
    r = put(s, b"k", ignore_value=True, lease=8, prev_kv=True)     # 3
    assert r.prev_kv == pkv(b"k", 2, 2, 1, b"v", 7)
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 3, 2, b"v", 8)]
    put(s, b"k", b"w", ignore_lease=True)                          # 4
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 4, 3, b"w", 8)]
    put(s, b"k", b"x")                                             # 5: lease detached
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 5, 4, b"x", 0)]
    # missing key: error, no revision used
    assert error_of(s.put(rpc.PutRequest(key=b"no", ignore_value=True))) == \
        errors.ErrKeyNotFound
    assert error_of(s.put(rpc.PutRequest(key=b"no", value=b"1", ignore_lease=True))) == \
        errors.ErrKeyNotFound
    delete(s, b"k")                                                # 6
    assert error_of(s.put(rpc.PutRequest(key=b"k", ignore_value=True))) == \
        errors.ErrKeyNotFound
    assert s.revision == 6


def test_put_lease_not_found(s):
    e = error_of(s.put(rpc.PutRequest(key=b"k", value=b"v", lease=99)))
    assert e == errors.ErrLeaseNotFound
    assert e.code == errors.StatusCode.NOT_FOUND
    # checked before ignore_value's key check (etcd order for a plain Put)
    e = error_of(s.put(rpc.PutRequest(key=b"k", ignore_value=True, lease=99)))
    assert e == errors.ErrLeaseNotFound
    assert s.revision == 1 and get(s, b"k").count == 0
    s.lease_grant(99, 60)
    assert list(get(s, b"k").kvs) == []
    put(s, b"k", b"v", lease=99)
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 2, 1, b"v", 99)]


def test_delete_range_prev_kvs(s):
    fill(s)
    r = delete(s, b"a", range_end=b"c", prev_kv=True)
    assert r.header.revision == 9 and r.deleted == 2
    assert list(r.prev_kvs) == [pkv(b"a", 2, 4, 3, b"a2"), pkv(b"b", 5, 5, 1, b"b0")]
    r = delete(s, b"c", range_end=b"\0")
    assert r.header.revision == 10 and r.deleted == 2 and not r.prev_kvs
    assert get(s, b"\0", range_end=b"\0").count == 0
    assert keys(get(s, b"\0", range_end=b"\0", revision=9)) == [b"c", b"d"]


# -- Txn ---------------------------------------------------------------------------------

def test_empty_and_read_only_txn_do_not_bump(s):
    put(s, b"k", b"v")
    r = txn(s)
    assert r == rpc.TxnResponse(header=header_only(2), succeeded=True)
    r = txn(s, success=[op_range(b"k")], failure=[op_put(b"k", b"x")])
    assert r.header.revision == 2 and r.succeeded
    assert r.responses[0].response_range.header == header_only(2)
    assert list(r.responses[0].response_range.kvs) == [pkv(b"k", 2, 2, 1, b"v")]
    r = txn(s, success=[op_delete(b"nothing"), op_delete(b"a", range_end=b"b")])
    assert r.header.revision == 2
    assert [x.response_delete_range for x in r.responses] == \
        [rpc.DeleteRangeResponse(header=header_only(2))] * 2
    assert s.revision == 2


@pytest.mark.parametrize("target,field,lo,equal,hi", [
    (C.VERSION, "version", 1, 2, 3),
    (C.CREATE, "create_revision", 1, 2, 3),
    (C.MOD, "mod_revision", 2, 3, 4),
    (C.VALUE, "value", b"v1", b"v2", b"v3"),
    (C.LEASE, "lease", 4, 5, 6),
])
def test_compare_targets_and_operators(s, target, field, lo, equal, hi):
    s.lease_grant(5, 60)
    put(s, b"k", b"v1", lease=5)          # 2
    put(s, b"k", b"v2", lease=5)          # 3: create 2, mod 3, version 2, lease 5
    expect = {
        C.EQUAL: (False, True, False),
        C.NOT_EQUAL: (True, False, True),
        C.GREATER: (True, False, False),   # kv's value > compared value
        C.LESS: (False, False, True),
    }
    for op, wanted in expect.items():
        got = tuple(txn(s, [cmp(b"k", target, op, **{field: x})]).succeeded
                    for x in (lo, equal, hi))
        assert got == wanted, (op, got)
    assert s.revision == 3


def test_compare_missing_key(s):
    put(s, b"other", b"v")
    for target, field in ((C.VERSION, "version"), (C.CREATE, "create_revision"),
                          (C.MOD, "mod_revision"), (C.LEASE, "lease")):
        assert txn(s, [cmp(b"k", target, C.EQUAL, **{field: 0})]).succeeded
        assert not txn(s, [cmp(b"k", target, C.GREATER, **{field: 0})]).succeeded
        assert txn(s, [cmp(b"k", target, C.LESS, **{field: 1})]).succeeded
    # VALUE on a missing key is always false
    for op in (C.EQUAL, C.NOT_EQUAL, C.GREATER, C.LESS):
        assert not txn(s, [cmp(b"k", C.VALUE, op, value=b"")]).succeeded
        assert not txn(s, [cmp(b"k", C.VALUE, op, value=b"x")]).succeeded
    # a deleted key is missing too
    put(s, b"k", b"v")
    delete(s, b"k")
    assert txn(s, [cmp(b"k", C.CREATE, C.EQUAL, create_revision=0)]).succeeded


def test_compare_unset_union_and_mismatched_union(s):
    put(s, b"k", b"")                      # 2
    assert txn(s, [cmp(b"k", C.VALUE, C.EQUAL)]).succeeded          # vs b""
    assert txn(s, [cmp(b"k", C.MOD, C.GREATER)]).succeeded          # vs 0
    # target MOD with the version member set: compares against 0 (etcd 3.4.23 too)
    assert txn(s, [cmp(b"k", C.MOD, C.GREATER, version=100)]).succeeded
    assert not txn(s, [cmp(b"k", C.MOD, C.EQUAL, version=2)]).succeeded


def test_compare_ranges(s):
    fill(s)         # versions: a 3, b 1, c 2, d 1
    assert txn(s, [cmp(b"a", C.VERSION, C.GREATER, range_end=b"e", version=0)]).succeeded
    assert not txn(s, [cmp(b"a", C.VERSION, C.GREATER, range_end=b"e",
                           version=1)]).succeeded
    assert txn(s, [cmp(b"a", C.VERSION, C.GREATER, range_end=b"b", version=1)]).succeeded
    assert txn(s, [cmp(b"c", C.MOD, C.GREATER, range_end=b"\0",
                       mod_revision=6)]).succeeded
    assert not txn(s, [cmp(b"b", C.MOD, C.GREATER, range_end=b"\0",
                           mod_revision=6)]).succeeded
    # empty range: the zero KV, or false for VALUE
    assert txn(s, [cmp(b"x", C.CREATE, C.EQUAL, range_end=b"y",
                       create_revision=0)]).succeeded
    assert not txn(s, [cmp(b"x", C.VALUE, C.NOT_EQUAL, range_end=b"y",
                           value=b"q")]).succeeded
    assert not txn(s, [cmp(b"a", C.VALUE, C.EQUAL, range_end=b"c", value=b"a2")]).succeeded
    assert txn(s, [cmp(b"a", C.VALUE, C.GREATER, range_end=b"c", value=b"a")]).succeeded


def test_compares_are_a_conjunction(s):
    put(s, b"a", b"1")
    put(s, b"b", b"2")
    ok = cmp(b"a", C.VALUE, C.EQUAL, value=b"1")
    bad = cmp(b"b", C.VALUE, C.EQUAL, value=b"1")
    r = txn(s, [ok, bad], success=[op_put(b"s", b"1")], failure=[op_put(b"f", b"1")])
    assert not r.succeeded and r.header.revision == 4
    assert list(r.responses[0].response_put.header.ListFields()) == \
        [(rpc.ResponseHeader.DESCRIPTOR.fields_by_name["revision"], 4)]
    assert get(s, b"s").count == 0 and get(s, b"f").count == 1
    assert txn(s, [ok, ok]).succeeded


def test_txn_reads_see_earlier_writes(s):
    put(s, b"k", b"v1")                                            # 2
    put(s, b"gone", b"g")                                          # 3
    r = txn(s, success=[
        op_range(b"k"),                                            # before any write
        op_delete(b"nothing"),                                     # deletes nothing: 3
        op_put(b"k", b"v2", prev_kv=True),
        op_range(b"k"),
        op_range(b"k", revision=3),                                # historic
        op_delete(b"nothing2"),                                    # after a write: 4
        op_delete(b"gone", prev_kv=True),
        op_range(b"\0", range_end=b"\0"),
    ])
    assert r.header.revision == 4 and r.succeeded
    rr = [x for x in r.responses]
    assert rr[0].response_range == rpc.RangeResponse(
        header=header_only(3), kvs=[pkv(b"k", 2, 2, 1, b"v1")], count=1)
    assert rr[1].response_delete_range == rpc.DeleteRangeResponse(header=header_only(3))
    assert rr[2].response_put == rpc.PutResponse(header=header_only(4),
                                                 prev_kv=pkv(b"k", 2, 2, 1, b"v1"))
    assert rr[3].response_range == rpc.RangeResponse(
        header=header_only(4), kvs=[pkv(b"k", 2, 4, 2, b"v2")], count=1)
    assert rr[4].response_range == rpc.RangeResponse(
        header=header_only(4), kvs=[pkv(b"k", 2, 2, 1, b"v1")], count=1)
    assert rr[5].response_delete_range == rpc.DeleteRangeResponse(header=header_only(4))
    assert rr[6].response_delete_range == rpc.DeleteRangeResponse(
        header=header_only(4), deleted=1, prev_kvs=[pkv(b"gone", 3, 3, 1, b"g")])
    assert rr[7].response_range == rpc.RangeResponse(
        header=header_only(4), kvs=[pkv(b"k", 2, 4, 2, b"v2")], count=1)
    assert s.revision == 4
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 4, 2, b"v2")]
    assert get(s, b"gone").count == 0


def test_txn_range_merges_pending_writes_with_limit(s):
    for k in (b"a", b"b", b"c", b"d"):
        put(s, k, b"old")                                          # 2..5
    r = txn(s, success=[
        op_delete(b"b"),
        op_put(b"bb", b"new"),
        op_put(b"e", b"new"),
        op_put(b"a", b"new"),
        op_range(b"a", range_end=b"\0", limit=2, keys_only=True),
        op_range(b"a", range_end=b"\0", limit=4),
        op_range(b"a", range_end=b"\0", count_only=True),
        op_range(b"a", range_end=b"\0", sort_order=rpc.RangeRequest.DESCEND,
                 sort_target=rpc.RangeRequest.MOD, limit=3),
        op_delete(b"bb", range_end=b"\0", prev_kv=True),     # "\0": etcd allows this
    ])
    assert r.header.revision == 6
    rr = [x.response_range for x in r.responses[4:8]]
    assert [list(x.kvs) for x in rr[:1]] == [[pkv(b"a", 2, 6, 2), pkv(b"bb", 6, 6, 1)]]
    assert rr[0].more and rr[0].count == 5
    assert keys(rr[1]) == [b"a", b"bb", b"c", b"d"] and rr[1].more and rr[1].count == 5
    assert rr[2] == rpc.RangeResponse(header=header_only(6), count=5)
    assert keys(rr[3]) == [b"a", b"bb", b"e"] and rr[3].more
    d = r.responses[8].response_delete_range
    assert d.deleted == 4 and d.header.revision == 6
    assert list(d.prev_kvs) == [pkv(b"bb", 6, 6, 1, b"new"), pkv(b"c", 4, 4, 1, b"old"),
                                pkv(b"d", 5, 5, 1, b"old"), pkv(b"e", 6, 6, 1, b"new")]
    assert list(get(s, b"\0", range_end=b"\0").kvs) == [pkv(b"a", 2, 6, 2, b"new")]


def test_nested_txns(s):
    put(s, b"k", b"v1")                                            # 2
    inner = op_txn(
        compare=[cmp(b"k", C.VALUE, C.EQUAL, value=b"v1")],        # snapshot: still v1
        success=[op_range(b"k"), op_txn(failure=[op_put(b"never1", b"x")]),
                 op_txn([cmp(b"k", C.VERSION, C.EQUAL, version=9)],
                        success=[op_put(b"never2", b"x")],
                        failure=[op_put(b"inner", b"i"), op_range(b"inner")])],
        failure=[op_put(b"never3", b"x")])
    r = txn(s, success=[op_put(b"k", b"v2"), inner, op_range(b"k", keys_only=True)])
    assert r.header.revision == 3 and r.succeeded
    assert r.responses[0].response_put == rpc.PutResponse(header=header_only(3))
    t = r.responses[1].response_txn
    assert t.HasField("header") and t.header == rpc.ResponseHeader()
    assert t.succeeded
    assert t.responses[0].response_range == rpc.RangeResponse(
        header=header_only(3), kvs=[pkv(b"k", 2, 3, 2, b"v2")], count=1)
    t1 = t.responses[1].response_txn
    assert t1 == rpc.TxnResponse(header=rpc.ResponseHeader(), succeeded=True)
    assert t1.HasField("header")
    t2 = t.responses[2].response_txn
    assert t2.HasField("header") and not t2.succeeded
    assert t2.responses[0].response_put == rpc.PutResponse(header=header_only(3))
    assert t2.responses[1].response_range == rpc.RangeResponse(
        header=header_only(3), kvs=[pkv(b"inner", 3, 3, 1, b"i")], count=1)
    assert list(r.responses[2].response_range.kvs) == [pkv(b"k", 2, 3, 2)]
    assert keys(get(s, b"\0", range_end=b"\0")) == [b"inner", b"k"]
    # the whole thing is one revision
    assert s.revision == 3


def test_nested_txn_paths_in_preorder(s):
    # several nested txns, with nesting inside the not-taken branch of one: the branch
    # decisions must be consumed in the same order they were made.
    put(s, b"x", b"1")                                             # 2
    t_false = cmp(b"x", C.VALUE, C.EQUAL, value=b"no")
    t_true = cmp(b"x", C.VALUE, C.EQUAL, value=b"1")
    r = txn(s, [t_true], success=[
        op_txn([t_false], success=[op_txn([t_true], success=[op_put(b"bad1", b"")])],
               failure=[op_txn([t_false], success=[op_put(b"bad2", b"")],
                               failure=[op_put(b"ok1", b"")])]),
        op_txn([t_true], success=[op_put(b"ok2", b"")], failure=[op_put(b"bad3", b"")]),
    ])
    assert r.succeeded and r.header.revision == 3
    a = r.responses[0].response_txn
    assert not a.succeeded and not a.responses[0].response_txn.succeeded
    b = r.responses[1].response_txn
    assert b.succeeded
    assert keys(get(s, b"\0", range_end=b"\0")) == [b"ok1", b"ok2", b"x"]


def test_txn_errors_are_atomic(s):
    put(s, b"k", b"v")                                             # 2
    bad_ignore = op_put(b"missing", ignore_value=True)
    e = error_of(s.txn(rpc.TxnRequest(success=[op_put(b"a", b"1"), bad_ignore])))
    assert e == errors.ErrKeyNotFound
    e = error_of(s.txn(rpc.TxnRequest(success=[op_put(b"a", b"1"),
                                               op_put(b"b", b"1", lease=42)])))
    assert e == errors.ErrLeaseNotFound
    # also inside a nested txn of the executed branch
    e = error_of(s.txn(rpc.TxnRequest(success=[op_put(b"a", b"1"),
                                               op_txn(success=[bad_ignore])])))
    assert e == errors.ErrKeyNotFound
    # key check before lease check inside a txn (etcd checkRequestPut order)
    e = error_of(s.txn(rpc.TxnRequest(success=[op_put(b"missing", ignore_value=True,
                                                      lease=42)])))
    assert e == errors.ErrKeyNotFound
    # range revision checks of the executed branch happen up front too
    e = error_of(s.txn(rpc.TxnRequest(success=[op_put(b"a", b"1"),
                                               op_range(b"a", revision=3)])))
    assert e == errors.ErrFutureRev
    # etcd quirk: inside a txn a negative revision below the compact revision (-1)
    e = error_of(s.txn(rpc.TxnRequest(success=[op_range(b"a", revision=-2)])))
    assert e == errors.ErrCompacted
    assert txn(s, success=[op_range(b"k", revision=-1)]).responses[0].response_range.count == 1
    assert s.revision == 2 and keys(get(s, b"\0", range_end=b"\0")) == [b"k"]
    # the branch not taken is not checked
    r = txn(s, success=[op_put(b"a", b"1")], failure=[bad_ignore,
                                                       op_put(b"b", b"", lease=42)])
    assert r.succeeded and r.header.revision == 3
    r = txn(s, [cmp(b"k", C.VALUE, C.EQUAL, value=b"no")], success=[bad_ignore],
            failure=[op_put(b"k", ignore_value=True), op_put(b"z", b"", prev_kv=True)])
    assert not r.succeeded and r.header.revision == 4
    assert list(get(s, b"k").kvs) == [pkv(b"k", 2, 4, 2, b"v")]


def test_txn_writes_one_key_twice(s):
    # etcd's duplicate-key check misses delete ranges ending in "\0", so 3.4.23 accepts
    # these txns; responses and watch events below are what it answered.
    changes = []
    s.subscribe(changes.append)
    put(s, b"e", b"old")                                           # 2
    r = txn(s, success=[op_delete(b"e", range_end=b"\0", prev_kv=True),
                        op_put(b"e", b"new", prev_kv=True)])
    assert r.header.revision == 3
    assert r.responses[0].response_delete_range == rpc.DeleteRangeResponse(
        header=header_only(3), deleted=1, prev_kvs=[pkv(b"e", 2, 2, 1, b"old")])
    assert r.responses[1].response_put == rpc.PutResponse(header=header_only(3))
    assert list(get(s, b"e").kvs) == [pkv(b"e", 3, 3, 1, b"new")]
    old = KV(b"e", 2, 2, 1, b"old", 0)
    new = KV(b"e", 3, 3, 1, b"new", 0)
    # a creation event has no prev_kv (etcd's watch skips it for creations)
    assert changes[-1] == Change(3, (Event(DELETE, KV(b"e", 0, 3, 0, b"", 0), old),
                                     Event(PUT, new, None)))
    r = txn(s, success=[op_put(b"f", b"x"),
                        op_delete(b"e", range_end=b"\0", prev_kv=True)])
    assert r.header.revision == 4
    assert r.responses[1].response_delete_range == rpc.DeleteRangeResponse(
        header=header_only(4), deleted=2,
        prev_kvs=[pkv(b"e", 3, 3, 1, b"new"), pkv(b"f", 4, 4, 1, b"x")])
    f = KV(b"f", 4, 4, 1, b"x", 0)
    # prev_kv of the deletes is the key at revision 3 (f did not exist then)
    assert changes[-1] == Change(4, (Event(PUT, f, None),
                                     Event(DELETE, KV(b"e", 0, 4, 0, b"", 0), new),
                                     Event(DELETE, KV(b"f", 0, 4, 0, b"", 0), None)))
    assert get(s, b"e", range_end=b"\0").count == 0
    assert keys(get(s, b"e", range_end=b"\0", revision=3)) == [b"e"]
    # an ignore_value put after such a delete makes etcd 3.4.23 panic; we refuse it
    put(s, b"g", b"1")                                             # 5
    e = error_of(s.txn(rpc.TxnRequest(success=[
        op_delete(b"g", range_end=b"\0"), op_put(b"g", ignore_value=True)])))
    assert e == errors.ErrKeyNotFound
    assert s.revision == 5 and get(s, b"g").count == 1


# -- events, subscribe, history -----------------------------------------------------------

def test_events_and_prev_kv(s):
    changes = []
    s.subscribe(changes.append)
    put(s, b"k", b"1")                                             # 2
    put(s, b"k", b"2", lease=0)                                    # 3
    delete(s, b"k")                                                # 4
    delete(s, b"k")                                                # nothing
    txn(s, success=[op_range(b"k")])                               # nothing
    put(s, b"a", b"x")                                             # 5
    txn(s, success=[op_put(b"b", b"y"), op_delete(b"a", range_end=b"ab"),
                    op_put(b"c", b"z")])                           # 6
    k1 = KV(b"k", 2, 2, 1, b"1", 0)
    k2 = KV(b"k", 2, 3, 2, b"2", 0)
    a1 = KV(b"a", 5, 5, 1, b"x", 0)
    b1 = KV(b"b", 6, 6, 1, b"y", 0)
    assert changes == [
        Change(2, (Event(PUT, k1, None),)),
        Change(3, (Event(PUT, k2, k1),)),
        Change(4, (Event(DELETE, KV(b"k", 0, 4, 0, b"", 0), k2),)),
        Change(5, (Event(PUT, a1, None),)),
        Change(6, (Event(PUT, b1, None),
                   Event(DELETE, KV(b"a", 0, 6, 0, b"", 0), a1),
                   Event(PUT, KV(b"c", 6, 6, 1, b"z", 0), None))),
    ]
    # the wire form of a DELETE event: only key and mod_revision
    ev = mvcc.event_to_pb(changes[2].events[0], prev_kv=True)
    assert ev == kv_pb2.Event(type=kv_pb2.Event.DELETE,
                              kv=kv_pb2.KeyValue(key=b"k", mod_revision=4),
                              prev_kv=pkv(b"k", 2, 3, 2, b"2"))
    assert not mvcc.event_to_pb(changes[1].events[0]).HasField("prev_kv")


def test_subscribe_order_reentrancy_and_unsubscribe(s):
    seen = []

    def first(change):
        seen.append(("first", change.revision))
        if change.revision == 2:
            # 3, delivered after 2 (callbacks run on the reactor thread: do not wait)
            raw(s).put(rpc.PutRequest(key=b"from-callback"))
            raise RuntimeError("a failing subscriber must not break the others")

    def second(change):
        seen.append(("second", change.revision))

    unsub = s.subscribe(first)
    s.subscribe(second)
    r = put(s, b"k", b"v")
    assert r.header.revision == 2
    settle(s)
    assert seen == [("first", 2), ("second", 2), ("first", 3), ("second", 3)]
    unsub()
    unsub()
    del seen[:]
    put(s, b"k", b"w")
    assert seen == [("second", 4)]


def test_history(s):
    fill(s)                                  # a@2,3,4 b@5 c@6,7 d@8
    delete(s, b"a", range_end=b"c")          # 9: a, b
    h = result(s.history(5, b"\0", b"\0"))
    assert [c.revision for c in h] == [5, 6, 7, 8, 9]
    assert len(h[-1].events) == 2
    h = result(s.history(5, b"b", b""))
    assert [(c.revision, [e.kv.key for e in c.events]) for c in h] == \
        [(5, [b"b"]), (9, [b"b"])]
    assert h[1].events[0].type == DELETE
    assert h[1].events[0].prev_kv == KV(b"b", 5, 5, 1, b"b0", 0)
    h = result(s.history(0, b"a", b"b", limit_revisions=2))
    assert [c.revision for c in h] == [2, 3]
    h = result(s.history(3, b"a", b"\0", limit_revisions=3))
    assert [c.revision for c in h] == [3, 4, 5]
    assert result(s.history(10, b"\0", b"\0")) == []
    result(s.compact(6))
    assert error_of(s.history(5, b"\0", b"\0")) == errors.ErrCompacted
    h = result(s.history(6, b"\0", b"\0"))
    assert [c.revision for c in h] == [6, 7, 8, 9]
    # prev_kv of events at the compact revision is gone (etcd reads it at rev - 1)
    assert h[0].events[0].prev_kv is None
    assert h[1].events[0].prev_kv == KV(b"c", 6, 6, 1, b"c0", 0)


# -- compaction ---------------------------------------------------------------------------

def test_compact_errors(s):
    put(s, b"k", b"1")                                             # 2
    put(s, b"k", b"2")                                             # 3
    assert error_of(s.compact(4)) == errors.ErrFutureRev
    assert result(s.compact(0)) == 3          # works once on a fresh store (etcd too)
    assert s.compact_revision == 0
    assert error_of(s.compact(0)) == errors.ErrCompacted
    assert error_of(s.compact(-3)) == errors.ErrCompacted
    assert result(s.compact(2)) == 3
    assert error_of(s.compact(2)) == errors.ErrCompacted
    assert error_of(s.compact(1)) == errors.ErrCompacted
    assert result(s.compact(3)) == 3          # to the current revision
    assert s.revision == 3 and s.compact_revision == 3
    assert put(s, b"k", b"3").header.revision == 4


def test_compaction_reads_and_memory(s):
    for i in range(10):
        put(s, b"hot", b"v%d" % i)                                 # 2..11
    put(s, b"dead", b"x")                                          # 12
    delete(s, b"dead")                                             # 13
    put(s, b"tomb-after", b"x")                                    # 14
    put(s, b"cold", b"c")                                          # 15
    delete(s, b"tomb-after")                                       # 16
    put(s, b"hot", b"last")                                        # 17
    before = result(s.status())
    assert before.db_size >= before.db_size_in_use > 0
    if is_memory(s):
        assert before.db_size == before.db_size_in_use
        assert len(s.keyspace.log) == 16
        assert len(s.keyspace.keys[b"hot"]) == 11

    assert result(s.compact(14)) == 17
    assert s.compact_revision == 14
    # reads below R fail with the exact error; R and above work
    e = error_of(s.range(rpc.RangeRequest(key=b"hot", revision=13)))
    assert e == errors.ErrCompacted and e.code == errors.StatusCode.OUT_OF_RANGE
    assert e.message == "etcdserver: mvcc: required revision has been compacted"
    r = get(s, b"\0", range_end=b"\0", revision=14)
    assert list(r.kvs) == [pkv(b"hot", 2, 11, 10, b"v9"),
                           pkv(b"tomb-after", 14, 14, 1, b"x")]
    assert r.header.revision == 17
    r = get(s, b"\0", range_end=b"\0", revision=16)
    assert keys(r) == [b"cold", b"hot"]
    assert list(get(s, b"hot").kvs) == [pkv(b"hot", 2, 17, 11, b"last")]
    if is_memory(s):
        # what is kept: the latest version <= 14 of live keys and everything after it
        # (the SQL stores' rows are checked in test_sql_store.py)
        assert s.keyspace.keys[b"hot"] == [KV(b"hot", 2, 11, 10, b"v9", 0),
                                   KV(b"hot", 2, 17, 11, b"last", 0)]
        assert b"dead" not in s.keyspace.keys                   # tombstone <= R: key forgotten
        assert len(s.keyspace.keys[b"tomb-after"]) == 2         # its tombstone is after R
        assert [c.revision for c in s.keyspace.log] == [14, 15, 16, 17]
    after = result(s.status())
    if is_memory(s):
        assert after.db_size < before.db_size
    assert after.revision == 17 and after.compact_revision == 14

    assert result(s.compact(17)) == 17
    if is_memory(s):
        assert list(s.keyspace.keys.keys()) == [b"cold", b"hot"]
        assert s.keyspace.keys[b"hot"] == [KV(b"hot", 2, 17, 11, b"last", 0)]
        assert [c.revision for c in s.keyspace.log] == [17]
    assert result(s.history(17, b"\0", b"\0"))[0].events[0].prev_kv is None
    assert [c.revision for c in result(s.history(17, b"\0", b"\0"))] == [17]
    assert keys(get(s, b"\0", range_end=b"\0", revision=17)) == [b"cold", b"hot"]
    if is_memory(s):
        # the same as a fresh store holding the same data, compacted likewise
        fresh = MemoryStore(1)
        put(fresh, b"cold", b"c")
        put(fresh, b"hot", b"last")
        result(fresh.compact(3))
        assert result(s.status()).db_size == result(fresh.status()).db_size
    # writes keep working
    assert put(s, b"hot", b"again").header.revision == 18
    assert list(get(s, b"hot").kvs) == [pkv(b"hot", 2, 18, 12, b"again")]


def test_compaction_tombstone_at_r(s):
    put(s, b"k", b"1")                                             # 2
    delete(s, b"k")                                                # 3
    put(s, b"j", b"1")                                             # 4
    result(s.compact(3))
    if is_memory(s):
        assert b"k" not in s.keyspace.keys
    assert get(s, b"k", revision=3).count == 0
    assert keys(get(s, b"\0", range_end=b"\0", revision=3)) == []
    assert keys(get(s, b"\0", range_end=b"\0", revision=4)) == [b"j"]
    # the delete at R is still in the watch history, without prev_kv
    h = result(s.history(3, b"k", b""))
    assert h == [Change(3, (Event(DELETE, KV(b"k", 0, 3, 0, b"", 0), None),))]


def test_compaction_frees_everything_deleted(mem):
    s = mem
    empty = result(s.status()).db_size
    assert empty == keyspace.BASE_BYTES        # never zero, like etcd's bbolt file
    for i in range(50):
        put(s, b"k%d" % i, b"v" * 100)
        put(s, b"k%d" % i, b"w" * 100)
    full = result(s.status()).db_size
    assert full > 100 * 100
    delete(s, b"k", range_end=b"l")
    assert len(s.keyspace.dead) == 50
    assert get(s, b"k", range_end=b"l", count_only=True).count == 0
    result(s.compact(s.revision))
    assert len(s.keyspace.keys) == 0 and len(s.keyspace.dead) == 0 and len(s.keyspace.log) == 1
    # just the last change (50 delete events), kept for watchers
    assert result(s.status()).db_size == (keyspace.BASE_BYTES + keyspace.CHANGE_OVERHEAD
                                          + 50 * keyspace.EVENT_OVERHEAD)


def test_compact_versions_helper():
    h = [KV(b"k", 2, 2, 1, b"", 0), KV(b"k", 2, 4, 2, b"", 0), KV(b"k", 0, 6, 0, b"", 0),
         KV(b"k", 8, 8, 1, b"", 0)]
    assert mvcc.compact_versions(h, 1) is h
    assert mvcc.compact_versions(h, 2) is h
    assert mvcc.compact_versions(h, 3) is h
    assert mvcc.compact_versions(h, 4) == h[1:]
    assert mvcc.compact_versions(h, 5) == h[1:]
    assert mvcc.compact_versions(h, 6) == h[3:]
    assert mvcc.compact_versions(h, 7) == h[3:]
    assert mvcc.compact_versions(h, 9) == h[3:]
    assert mvcc.compact_versions(h[:3], 6) == []


def test_random_against_snapshot_model(s):
    """Random puts/deletes/txns/compactions checked against naive full snapshots per
    revision: every range at every readable revision, counts, the latest state after
    every step, and the memory store's internal invariants."""
    import random
    rnd = random.Random(7)
    memory_store = is_memory(s)
    snaps = {1: {}}                       # revision -> {key: KV}
    names = [b"a", b"b", b"ba", b"c", b"\xff", b"\x00"]
    for step in range(600):
        cur = dict(snaps[s.revision])
        nxt = s.revision + 1
        r = rnd.random()
        if r < 0.45:
            k, v = rnd.choice(names), rnd.choice([b"", b"1", b"22"])
            put(s, k, v)
            old = cur.get(k)
            cur[k] = (KV(k, old.create_revision, nxt, old.version + 1, v, 0) if old
                      else KV(k, nxt, nxt, 1, v, 0))
        elif r < 0.7:
            k, e = rnd.choice(names), rnd.choice([b"", b"\0", rnd.choice(names)])
            delete(s, k, range_end=e)
            for x in [x for x in cur if mvcc.in_range(x, k, e)]:
                del cur[x]
        elif r < 0.9:
            a, b = rnd.sample(names, 2)
            txn(s, success=[op_delete(a), op_put(b, b"t")])
            cur.pop(a, None)
            old = cur.get(b)
            cur[b] = (KV(b, old.create_revision, nxt, old.version + 1, b"t", 0) if old
                      else KV(b, nxt, nxt, 1, b"t", 0))
        else:
            lo = max(s.compact_revision + 1, 1)
            if lo <= s.revision:
                result(s.compact(rnd.randint(lo, s.revision)))
            continue
        if s.revision == nxt:
            snaps[nxt] = cur
        else:
            assert cur == snaps[s.revision]
        latest = get(s, b"\0", range_end=b"\0")
        assert [mvcc.kv_from_pb(m) for m in latest.kvs] == sorted(
            snaps[s.revision].values(), key=lambda kv: kv.key)
        if memory_store:
            assert set(s.keyspace.dead) == {k for k, h in s.keyspace.keys.items() if h[-1].version == 0}
    first = max(s.compact_revision, 1)
    for rev in range(first, s.revision + 1):
        snap = snaps[rev]
        for k in names:
            for e in (b"", b"\0", b"b", b"c", b"\xff"):
                want = sorted((kv for kv in snap.values() if mvcc.in_range(kv.key, k, e)),
                              key=lambda kv: kv.key)
                got = get(s, k, range_end=e, revision=rev)
                assert [mvcc.kv_from_pb(m) for m in got.kvs] == want
                assert got.count == len(want)
                got = get(s, k, range_end=e, revision=rev, limit=1)
                assert got.count == len(want) and got.more == (len(want) > 1)
    if s.compact_revision > 1:
        assert error_of(s.range(rpc.RangeRequest(
            key=b"a", revision=s.compact_revision - 1))) == errors.ErrCompacted


def test_helpers():
    assert mvcc.in_range(b"a", b"a", b"")
    assert not mvcc.in_range(b"ab", b"a", b"")
    assert mvcc.in_range(b"zz", b"a", b"\0")
    assert not mvcc.in_range(b"0", b"a", b"\0")
    assert mvcc.in_range(b"ab", b"a", b"b") and not mvcc.in_range(b"b", b"a", b"b")
    assert mvcc.txn_is_read_only(rpc.TxnRequest(success=[op_range(b"a")]))
    assert not mvcc.txn_is_read_only(rpc.TxnRequest(failure=[op_txn()]))
    kv = KV(b"k", 1, 2, 3, b"v", 4)
    assert mvcc.kv_from_pb(mvcc.kv_to_pb(kv)) == kv
    assert mvcc.kv_to_pb(kv, keys_only=True).value == b""


def test_named_errors_are_raised_fresh_and_compare_by_code_and_message():
    """``raise errors.ErrX`` must raise a new instance each time: one shared instance
    would chain every raise's traceback (and its frames) onto itself forever."""
    import traceback

    def fail():
        raise errors.ErrKeyNotFound

    seen = []
    for _ in range(50):
        try:
            fail()
        except errors.EtcdError as e:
            seen.append(e)
    assert len({id(e) for e in seen}) == 50
    assert all(len(traceback.extract_tb(e.__traceback__)) == 2 for e in seen)
    e = seen[0]
    assert (e.code, e.message, str(e)) == (
        errors.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found",
        "etcdserver: key not found")
    assert e == errors.ErrKeyNotFound and errors.ErrKeyNotFound == e
    assert e == errors.EtcdError(3, "etcdserver: key not found")
    assert e != errors.ErrKeyNotProvided and e != errors.EtcdError(5, e.message)
    assert isinstance(e, errors.ErrKeyNotFound) and repr(e) == \
        "EtcdError(3, 'etcdserver: key not found')"


# -- the revision floor file ---------------------------------------------------------

def test_floor_file_is_reserved_ahead_and_exact_after_a_clean_stop(tmp_path):
    path = str(tmp_path / "floor")
    assert MemoryStore(floor_file=path).floor.reserve == memory.FLOOR_RESERVE == 100000
    st = MemoryStore(floor_file=path, seed=lambda: 1000)
    st.floor.reserve = 5
    assert st.revision == 1000 and not (tmp_path / "floor").exists()
    result(st.start())
    assert open(path).read() == "1005\n"
    for _ in range(5):
        put(st, b"k")
    # The store reached the reserved revision: the next write reserves further first.
    assert (st.revision, open(path).read()) == (1005, "1005\n")
    put(st, b"k")
    assert (st.revision, open(path).read()) == (1006, "1011\n")
    result(st.stop())
    assert open(path).read() == "%d\n" % st.revision


def test_floor_file_wins_over_a_clock_that_went_back(tmp_path):
    path = str(tmp_path / "floor")
    first = MemoryStore(floor_file=path, seed=lambda: 5000)
    result(first.start())
    for _ in range(10):
        put(first, b"k")
    seen = first.revision                                  # 5010; no clean stop (a crash)
    later = MemoryStore(floor_file=path, seed=lambda: 4000)        # the clock went back
    assert later.revision > seen
    assert later.revision == 5001 + memory.FLOOR_RESERVE
    # A clock ahead of the floor is used as it is.
    assert MemoryStore(floor_file=path, seed=lambda: 10 ** 9).revision == 10 ** 9
    # Without the file nothing remembers.
    assert MemoryStore(seed=lambda: 4000).revision == 4000 < seen


def test_floor_file_refusals(tmp_path):
    path = tmp_path / "floor"
    path.write_text("5000\n")
    with pytest.raises(memory.RevisionFloorError) as info:
        MemoryStore(initial_revision=5000, floor_file=str(path))
    assert str(info.value) == (
        "initial_revision 5000 is not above the revision floor 5000 recorded in %s: "
        "clients may have seen revisions up to 5000" % path)
    assert MemoryStore(initial_revision=5001, floor_file=str(path)).revision == 5001
    for bad in ("", "x12", "-3"):
        path.write_text(bad)
        with pytest.raises(memory.RevisionFloorError) as info:
            MemoryStore(floor_file=str(path))
        assert "does not hold a revision" in str(info.value)
    # A floor that cannot be written stops writes (Unavailable), not the server.
    path.write_text("10")
    st = MemoryStore(floor_file=str(path), seed=lambda: 100)
    result(st.start())
    st.floor.path = str(tmp_path / "no-such-dir" / "floor")
    st._reserved = st.revision
    err = error_of(st.put(rpc.PutRequest(key=b"k")))
    assert err.code == errors.StatusCode.UNAVAILABLE
    assert err.message.startswith("etcd-adapter: cannot record the revision floor in ")
    assert st.revision == 100 and result(st.range(rpc.RangeRequest(key=b"k"))).count == 0


# -- stopping ---------------------------------------------------------------------------

def test_requests_racing_a_stop_get_server_stopped(s):
    # Each request is issued right after stop() began (on the reactor thread, before
    # the stop has finished): etcd's Unavailable "etcdserver: server stopped", an
    # instance (a class would reach the client as Unknown), on every store.
    put(s, b"k", b"v")
    lease_id = result(s.lease_grant(0, 60))[0]
    store = raw(s)
    requests = {
        "range": lambda: store.range(rpc.RangeRequest(key=b"k")),
        "put": lambda: store.put(rpc.PutRequest(key=b"k", value=b"w")),
        "delete_range": lambda: store.delete_range(rpc.DeleteRangeRequest(key=b"k")),
        "txn": lambda: store.txn(rpc.TxnRequest(success=[op_put(b"k", b"w")])),
        "replace_prefix": lambda: store.replace_prefix(b"k", {}),
        "compact": lambda: store.compact(1),
        "lease_grant": lambda: store.lease_grant(0, 60),
        "lease_revoke": lambda: store.lease_revoke(lease_id),
        "status": store.status,
    }

    def race():
        stopping = store.stop()
        return stopping, {name: request() for name, request in requests.items()}

    if is_memory(s):
        stopping, pending = race()
    else:
        stopping, pending = stores.call(race)
    answers = {}
    for name, d in pending.items():
        out = []
        if is_memory(s):
            d.addBoth(out.append)
        else:
            try:
                out.append(stores.call(lambda: d))
            except Exception as e:
                out.append(e)
        answers[name] = out[0].value if hasattr(out[0], "value") else out[0]
    expected = {name: (errors.ErrStopped, errors.StatusCode.UNAVAILABLE,
                       "etcdserver: server stopped") for name in requests}
    assert {name: (type(e), getattr(e, "code", None), getattr(e, "message", None))
            for name, e in answers.items()} == expected
    if is_memory(s):
        result(stopping)
        # The memory store may be started again (the embedding API restarts it): it
        # serves again, with its data.
        result(store.start())
        assert get(s, b"k").kvs[0].value == b"v"
        assert put(s, b"k", b"w").header.revision == 3
    else:
        stores.call(lambda: stopping)

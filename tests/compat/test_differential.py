"""Differential test: the same random KV operations on a real etcd and on our server
(the generator and the comparison: tests/support/differential.py), per seed, with the
adapter on each store.

Reproduce one seed with e.g. ``./run-tests tests/compat/test_differential.py -k
"seed_3"``; ``ETCDADAPTER_DIFF_SEEDS`` (e.g. ``1-50`` or ``3,17``) and
``ETCDADAPTER_DIFF_OPS`` (default 500) fuzz further.
"""

import os

import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.mvcc import prefix_end

from support import servers
from support.differential import CMP, METHODS, RO, diff_range, run_sequence, seeds
from support.stores import SQL_KINDS


SEEDS = seeds(os.environ.get("ETCDADAPTER_DIFF_SEEDS", "1-5"))
OPS_PER_SEED = int(os.environ.get("ETCDADAPTER_DIFF_OPS", "500"))
# The same sequence with the adapter on each SQL store (fewer seeds and operations: every
# write is a database transaction).  ``ETCDADAPTER_DIFF_SQL_SEEDS`` / ``_SQL_OPS`` fuzz
# further.
SQL_SEEDS = seeds(os.environ.get("ETCDADAPTER_DIFF_SQL_SEEDS", "1"))
SQL_OPS = int(os.environ.get("ETCDADAPTER_DIFF_SQL_OPS", "400"))
CASES = ([pytest.param("memory", s, id="seed_%d" % s) for s in SEEDS]
         + [pytest.param(kind, s, id="%s-seed_%d" % (kind, s))
            for kind in SQL_KINDS for s in SQL_SEEDS])


@pytest.mark.adapter
@pytest.mark.parametrize("target_store,seed", CASES, indirect=["target_store"])
def test_differential(target_store, start_servers, seed):
    pair = start_servers(target_store=target_store)
    ops = OPS_PER_SEED if target_store.startswith("memory:") else SQL_OPS
    gen = run_sequence(pair, seed, ops)
    # The final stores must agree too.
    everything = rpc.RangeRequest(key=b"\x00", range_end=b"\x00")
    ref = pair.etcd_client.call(METHODS["range"][0], everything, rpc.RangeResponse)
    got = pair.target_client.call(METHODS["range"][0], everything, rpc.RangeResponse)
    assert ref.ok and got.ok, (ref, got)
    assert (servers.normalise_response(ref.response, 0)
            == servers.normalise_response(got.response, pair.offset)), (
        "final stores differ:\netcd:\n%s\nours:\n%s" % (servers.show(ref.response),
                                                      servers.show(got.response)))
    assert gen.current > 50, "the sequence wrote too little (current rev %d)" % gen.current


@pytest.mark.adapter
def test_differential_store_starting_at_revision_1(start_servers):
    """``memory://?initial_revision=1``: same numbering as etcd, so revisions <= 0 in
    Compact can be compared too."""
    pair = start_servers(target_store="memory://?initial_revision=1")
    if servers.target_kind() == "adapter":
        assert pair.offset == 0, "initial_revision=1 store starts at %d" % (
            pair.target.base_revision)
    run_sequence(pair, 101, OPS_PER_SEED)


# ---------------------------------------------------------------------------------------
# Harness self-checks (no servers needed)

def test_prefix_end():
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"b/\xff") == b"b0"
    assert prefix_end(b"\xff\xff") == b"\x00"
    assert prefix_end(b"\xff/") == b"\xff0"


def test_revision_mapping_roundtrip():
    req = rpc.TxnRequest()
    c = req.compare.add(key=b"k", target=CMP.MOD, mod_revision=5)
    req.compare.add(key=b"k", target=CMP.CREATE, create_revision=0)
    req.success.add().request_range.CopyFrom(rpc.RangeRequest(key=b"k", revision=3,
                                                              min_mod_revision=-1))
    mapped = servers.map_request_revisions(req, 1000)
    assert mapped.compare[0].mod_revision == 1005
    assert mapped.compare[1].HasField("create_revision")
    assert mapped.compare[1].create_revision == 0
    assert mapped.success[0].request_range.revision == 1003
    assert mapped.success[0].request_range.min_mod_revision == -1
    assert c.mod_revision == 5  # original untouched

    resp = rpc.TxnResponse()
    resp.header.revision = 1007
    resp.header.member_id = 42
    rr = resp.responses.add().response_range
    rr.header.revision = 1007
    rr.kvs.add(key=b"k", create_revision=1002, mod_revision=1006)
    norm = servers.normalise_response(resp, 1000)
    assert norm.header.revision == 7 and norm.header.member_id == 1
    assert norm.header.cluster_id == 0
    assert norm.responses[0].response_range.kvs[0].create_revision == 2
    assert norm.responses[0].response_range.kvs[0].mod_revision == 6


def test_tie_aware_range_comparison():
    req = rpc.RangeRequest(key=b"a", range_end=b"b", sort_target=RO.VERSION,
                           sort_order=RO.DESCEND)
    kv = lambda k, v: rpc.RangeResponse().kvs.add(key=k, version=v)  # noqa: E731
    a = rpc.RangeResponse(count=3, kvs=[kv(b"a1", 2), kv(b"a2", 1), kv(b"a3", 1)])
    b = rpc.RangeResponse(count=3, kvs=[kv(b"a1", 2), kv(b"a3", 1), kv(b"a2", 1)])
    assert diff_range(req, a, b) == []
    c = rpc.RangeResponse(count=3, kvs=[kv(b"a2", 1), kv(b"a3", 1), kv(b"a1", 2)])
    assert diff_range(req, a, c)
    req.limit = 2
    d = rpc.RangeResponse(count=3, more=True, kvs=[kv(b"a1", 2), kv(b"a2", 1)])
    e = rpc.RangeResponse(count=3, more=True, kvs=[kv(b"a1", 2), kv(b"a3", 1)])
    assert diff_range(req, d, e) == []

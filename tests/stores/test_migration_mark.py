"""The SQL store while ``etcd-adapter migrate`` follows etcd into it: with the migration
mark (``etcd_meta`` row 2) present, every write is refused with Unavailable "etcdserver:
migration in progress: writes go to etcd until cut-over", reads are served, lease
expiry does nothing (etcd expires leases; the follower copies the deletions); once the
mark is gone, writes continue at the next revision and leases expire again.  A store
started on a marked database refuses writes from its first request."""

import pytest
from twisted.internet import task

from support import servers
from support import stores
from support.fired import error_of, result
from etcdadapter.errors import StatusCode
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.sql import following

MESSAGE = "etcdserver: migration in progress: writes go to etcd until cut-over"


@pytest.fixture(params=stores.SQL_KINDS)
def store_kind(request):
    return request.param


def in_transaction(s, fn):
    store = stores.raw(s)
    return stores.call(lambda: store.runner.call(
        lambda session: session.transaction("write", fn)))


def refused(d):
    e = error_of(d)
    return (e.code, e.message) == (StatusCode.UNAVAILABLE, MESSAGE)


def test_writes_refused_while_marked(make_store):
    clock = task.Clock()
    clock.advance(1000)
    s = make_store(clock=clock)
    lease_id, _ttl = result(s.lease_grant(0x10, 5))
    revision = result(s.put(rpc.PutRequest(key=b"/k", value=b"v", lease=lease_id))
                      ).header.revision
    in_transaction(s, lambda tx: following.set_mark(tx, revision))
    servers.wait_until(lambda: stores.raw(s).migration.active, what="the mark seen")

    # A second store started on the marked database knows at once.
    other = make_store(clock=clock, url=make_store.url, initial_revision=None)
    assert stores.raw(other).migration.active
    assert refused(other.put(rpc.PutRequest(key=b"/o", value=b"o")))

    put = rpc.PutRequest(key=b"/k", value=b"w")
    write_txn = rpc.TxnRequest(success=[rpc.RequestOp(request_put=put)])
    read_txn = rpc.TxnRequest(success=[rpc.RequestOp(
        request_range=rpc.RangeRequest(key=b"/k"))])
    assert refused(s.put(put))
    assert refused(s.delete_range(rpc.DeleteRangeRequest(key=b"/k")))
    assert refused(s.txn(write_txn))
    assert refused(s.compact(revision))
    assert refused(s.lease_grant(0, 10))
    assert refused(s.lease_revoke(lease_id))
    assert refused(s.lease_keepalive(lease_id))
    assert refused(s.auth_save(b"{}"))
    assert result(s.range(rpc.RangeRequest(key=b"/k"))).kvs[0].value == b"v"
    r = result(s.txn(read_txn))
    assert r.responses[0].response_range.kvs[0].value == b"v"

    clock.advance(10)                  # the lease is past its expiry: etcd's to expire
    assert result(s.lease_expire()) == []
    assert result(s.lease_list()) == [lease_id]
    assert result(s.range(rpc.RangeRequest(key=b"/k"))).header.revision == revision

    in_transaction(s, lambda tx: following.clear_mark(tx, stores.raw(s).dialect,
                                                      revision))
    servers.wait_until(lambda: not stores.raw(s).migration.active, what="the cut-over")
    assert result(s.lease_expire()) == [lease_id]
    assert result(s.put(put)).header.revision == revision + 2

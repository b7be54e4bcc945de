"""Leases: every store's lessor (task.Clock; the store-level tests run on each store kind,
see tests/support/stores.py), the Lease service, and a comparison with a real etcd over
gRPC."""

import pytest
from twisted.internet import task

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.lease import LeaseService
from etcdadapter.services.rpc import CallContext, ServerStream
from etcdadapter.store.base import DELETE, LeaseTTL

from support import servers
from support.fired import error_of, result


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def s(make_store, clock):
    return make_store(initial_revision=1, clock=clock)


def put(s, key, value=b"v", **kw):
    return result(s.put(rpc.PutRequest(key=key, value=value, **kw)))


def lease_of(s, key):
    r = result(s.range(rpc.RangeRequest(key=key)))
    return r.kvs[0].lease if r.kvs else None


# ---------------------------------------------------------------------------------------
# Store

def test_grant_ids_and_ttls(s):
    assert result(s.lease_grant(1234, 60)) == (1234, 60)
    assert error_of(s.lease_grant(1234, 60)) == errors.ErrLeaseExist
    assert result(s.lease_grant(5, 1)) == (5, 2)            # raised to the minimum
    assert result(s.lease_grant(6, 0)) == (6, 2)
    assert result(s.lease_grant(-7, -5)) == (-7, 2)         # etcd accepts negative IDs
    assert result(s.lease_grant(8, 9000000000)) == (8, 9000000000)
    assert error_of(s.lease_grant(9, 9000000001)) == errors.ErrLeaseTTLTooLarge
    # the TTL check comes before the ID check, as in etcd's lessor
    assert error_of(s.lease_grant(1234, 9000000001)) == errors.ErrLeaseTTLTooLarge
    picked = {result(s.lease_grant(0, 10))[0] for _ in range(50)}
    assert len(picked) == 50 and all(0 < i < 2 ** 63 for i in picked)
    assert set(result(s.lease_list())) == picked | {1234, 5, 6, -7, 8}
    assert s.revision == 1                                  # grant never bumps


def test_attach_move_detach(s):
    result(s.lease_grant(1, 60))
    result(s.lease_grant(2, 60))
    put(s, b"a", lease=1)
    put(s, b"b", lease=1)
    assert result(s.lease_time_to_live(1, keys=True)).keys == (b"a", b"b")
    put(s, b"a", lease=2)                                   # moves
    put(s, b"b", b"w", ignore_lease=True)                   # stays
    assert result(s.lease_time_to_live(1, keys=True)).keys == (b"b",)
    assert result(s.lease_time_to_live(2, keys=True)).keys == (b"a",)
    put(s, b"b")                                            # no lease: detaches
    assert result(s.lease_time_to_live(1, keys=True)).keys == ()
    result(s.delete_range(rpc.DeleteRangeRequest(key=b"a")))
    assert result(s.lease_time_to_live(2, keys=True)).keys == ()
    # txn put attaches too; unknown lease fails and writes nothing
    txn = rpc.TxnRequest(success=[rpc.RequestOp(request_put=rpc.PutRequest(
        key=b"t", value=b"x", lease=2))])
    result(s.txn(txn))
    assert result(s.lease_time_to_live(2, keys=True)).keys == (b"t",)
    rev = s.revision
    assert error_of(s.put(rpc.PutRequest(key=b"z", lease=3))) == errors.ErrLeaseNotFound
    assert s.revision == rev
    # keys are not listed unless asked
    assert result(s.lease_time_to_live(2)).keys == ()


def test_revoke_one_revision_sorted_events(s):
    seen = []
    s.subscribe(seen.append)
    result(s.lease_grant(1, 60))
    for k in (b"c", b"a", b"b"):
        put(s, k, lease=1)
    put(s, b"other")
    rev = s.revision
    del seen[:]
    assert result(s.lease_revoke(1)) == rev + 1
    assert s.revision == rev + 1
    assert len(seen) == 1 and seen[0].revision == rev + 1
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in seen[0].events] == [
        (DELETE, b"a", rev + 1), (DELETE, b"b", rev + 1), (DELETE, b"c", rev + 1)]
    assert [e.prev_kv.lease for e in seen[0].events] == [1, 1, 1]
    assert lease_of(s, b"a") is None and lease_of(s, b"other") == 0
    assert result(s.lease_list()) == []
    assert result(s.lease_time_to_live(1)) == LeaseTTL(-1, 0, ())
    assert error_of(s.lease_revoke(1)) == errors.ErrLeaseNotFound
    # no keys: no revision
    result(s.lease_grant(2, 60))
    assert result(s.lease_revoke(2)) == rev + 1 and s.revision == rev + 1
    assert len(seen) == 1


def test_time_to_live_and_keepalive(s, clock):
    result(s.lease_grant(1, 10))
    assert result(s.lease_time_to_live(1)) == LeaseTTL(10, 10, ())
    clock.advance(0.3)
    assert result(s.lease_time_to_live(1)) == LeaseTTL(9, 10, ())    # truncated
    clock.advance(7)
    assert result(s.lease_time_to_live(1)).ttl == 2
    assert result(s.lease_keepalive(1)) == 10
    assert result(s.lease_time_to_live(1)).ttl == 10
    assert result(s.lease_keepalive(99)) == 0
    clock.advance(10)
    assert result(s.lease_keepalive(1)) == 0              # expired, not yet revoked


def test_expiry_through_service(s, clock):
    svc = LeaseService(s, ServerIdentity(), clock=clock)
    svc.start()
    seen = []
    s.subscribe(seen.append)
    result(s.lease_grant(1, 3))
    result(s.lease_grant(2, 5))
    put(s, b"k1", lease=1)
    put(s, b"k2", lease=2)
    rev = s.revision
    clock.advance(2.5)
    assert set(result(s.lease_list())) == {1, 2}
    assert result(s.lease_keepalive(2)) == 5              # expiry now 7.5
    clock.advance(0.5)                                    # t=3.0: lease 1 expires
    assert result(s.lease_list()) == [2]
    assert s.revision == rev + 1
    assert [(e.type, e.kv.key) for e in seen[-1].events] == [(DELETE, b"k1")]
    clock.advance(4.0)                                    # t=7.0: not yet
    assert result(s.lease_list()) == [2]
    clock.advance(0.5)                                    # t=7.5
    assert result(s.lease_list()) == []
    assert s.revision == rev + 2
    result(svc.stop())
    result(s.lease_grant(3, 2))
    clock.advance(10)
    assert result(s.lease_list()) == [3]                  # loop stopped


def test_expiry_rate_limited(s, clock):
    for i in range(1, 1202):
        result(s.lease_grant(i, 2))
    clock.advance(2)
    assert len(result(s.lease_expire(500))) == 500
    assert len(result(s.lease_list())) == 701
    svc = LeaseService(s, ServerIdentity(), clock=clock)
    svc.start()
    clock.advance(0.5)
    assert len(result(s.lease_list())) == 201
    clock.advance(0.5)
    assert result(s.lease_list()) == []
    svc.stop()


# ---------------------------------------------------------------------------------------
# Service

class FakeStream(ServerStream):
    def __init__(self):
        ServerStream.__init__(self, CallContext())
        self.sent = []
        self.finished = None

    def send(self, response):
        assert not self.closed
        self.sent.append(response)

    def finish(self, error=None):
        self.closed = True
        self.finished = (error,)


def test_service_methods(s, clock):
    svc = LeaseService(s, ServerIdentity(), clock=clock)
    r = result(svc.LeaseGrant(rpc.LeaseGrantRequest(ID=7, TTL=1), None))
    assert (r.ID, r.TTL, r.header.revision) == (7, 2, 1) and r.header.member_id
    put(s, b"b", lease=7)
    put(s, b"a", lease=7)
    r = result(svc.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=7, keys=True), None))
    assert (r.ID, r.TTL, r.grantedTTL, list(r.keys)) == (7, 2, 2, [b"a", b"b"])
    r = result(svc.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=8), None))
    assert (r.ID, r.TTL, r.grantedTTL, r.header.revision) == (8, -1, 0, 3)
    r = result(svc.LeaseLeases(rpc.LeaseLeasesRequest(), None))
    assert [x.ID for x in r.leases] == [7]
    stream = FakeStream()
    svc.LeaseKeepAlive(stream)
    stream.on_message(rpc.LeaseKeepAliveRequest(ID=7))
    stream.on_message(rpc.LeaseKeepAliveRequest(ID=9))
    assert [(x.ID, x.TTL, x.header.revision) for x in stream.sent] == [(7, 2, 3), (9, 0, 3)]
    assert stream.finished is None
    stream.on_half_close()                                # etcd: ends with OK
    assert stream.finished == (None,)
    r = result(svc.LeaseRevoke(rpc.LeaseRevokeRequest(ID=7), None))
    assert r.header.revision == 4
    assert error_of(svc.LeaseRevoke(rpc.LeaseRevokeRequest(ID=7), None)) == \
        errors.ErrLeaseNotFound
    paths = {m.path: m.http_paths for m in svc.methods()}
    assert paths["/etcdserverpb.Lease/LeaseRevoke"] == ("/v3/lease/revoke",
                                                       "/v3/kv/lease/revoke")


# ---------------------------------------------------------------------------------------
# Against etcd

LEASE = "/etcdserverpb.Lease/"
KV = "/etcdserverpb.KV/"


def _norm(pair, result_, server_is_target):
    if not result_.ok:
        return result_.error()
    return servers.normalise_response(result_.response,
                                      pair.offset if server_is_target else 0)


def _both(pair, method, request, response_class):
    ref = pair.etcd_client.call(method, request, response_class)
    got = pair.target_client.call(method, request, response_class)
    a, b = _norm(pair, ref, False), _norm(pair, got, True)
    assert a == b, "%s %s\n--- etcd:\n%s\n--- ours:\n%s" % (
        method, request, a if isinstance(a, tuple) else servers.show(a),
        b if isinstance(b, tuple) else servers.show(b))
    return ref, got


def _keepalive(client, ids):
    call = client.channel.stream_stream(
        LEASE + "LeaseKeepAlive", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=rpc.LeaseKeepAliveResponse.FromString)
    it = call(iter([rpc.LeaseKeepAliveRequest(ID=i) for i in ids]), timeout=10)
    out = list(it)
    return out, it.code()


@pytest.mark.adapter
def test_lease_against_etcd(pair):
    G = (LEASE + "LeaseGrant", rpc.LeaseGrantResponse)
    R = (LEASE + "LeaseRevoke", rpc.LeaseRevokeResponse)
    T = (LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveResponse)
    L = (LEASE + "LeaseLeases", rpc.LeaseLeasesResponse)
    P = (KV + "Put", rpc.PutResponse)
    W = (KV + "Range", rpc.RangeResponse)
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=100, TTL=600), G[1])
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=-3, TTL=-5), G[1])
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=100, TTL=60), G[1])          # exists
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=300, TTL=9000000001), G[1])  # too large
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=300, TTL=9000000000), G[1])
    ref, got = pair.etcd_client.call(G[0], rpc.LeaseGrantRequest(TTL=60), G[1]), \
        pair.target_client.call(G[0], rpc.LeaseGrantRequest(TTL=60), G[1])
    assert ref.response.ID > 0 and got.response.ID > 0 and got.response.TTL == 60
    auto = {ref.response.ID, got.response.ID}
    for key in (b"c", b"a", b"b"):
        _both(pair, P[0], rpc.PutRequest(key=key, value=b"v", lease=100), P[1])
    _both(pair, P[0], rpc.PutRequest(key=b"b", value=b"w", lease=300), P[1])   # moves
    _both(pair, P[0], rpc.PutRequest(key=b"x", value=b"v", lease=999), P[1])   # unknown
    for lid in (100, 300, 999):
        req = rpc.LeaseTimeToLiveRequest(ID=lid, keys=True)
        ref = pair.etcd_client.call(T[0], req, T[1])
        got = pair.target_client.call(T[0], req, T[1])
        a, b = _norm(pair, ref, False), _norm(pair, got, True)
        for m in (a, b):                 # key order is unspecified; TTL may tick
            m.keys.sort()
            assert m.TTL in (-1, m.grantedTTL, m.grantedTTL - 1)
            m.TTL = min(m.TTL, 0) if m.TTL < 0 else m.grantedTTL
        assert a == b, (servers.show(a), servers.show(b))
    ref = pair.etcd_client.call(L[0], rpc.LeaseLeasesRequest(), L[1])
    got = pair.target_client.call(L[0], rpc.LeaseLeasesRequest(), L[1])
    assert ({x.ID for x in ref.response.leases} - auto
            == {x.ID for x in got.response.leases} - auto == {100, -3, 300})
    assert len(ref.response.leases) == len(got.response.leases) == 4
    _both(pair, G[0], rpc.LeaseGrantRequest(ID=200, TTL=1), G[1])           # -> 2
    # keepalive: known and unknown leases; the stream ends OK after the half-close
    outs = []
    for client, off in ((pair.etcd_client, 0), (pair.target_client, pair.offset)):
        responses, code = _keepalive(client, [100, 999, 200])
        outs.append(([servers.normalise_response(r, off) for r in responses], code))
    assert outs[0] == outs[1]
    assert [r.TTL for r in outs[0][0]] == [600, 0, 2]
    _both(pair, R[0], rpc.LeaseRevokeRequest(ID=100), R[1])      # deletes a, c
    _both(pair, R[0], rpc.LeaseRevokeRequest(ID=100), R[1])      # not found
    _both(pair, R[0], rpc.LeaseRevokeRequest(ID=-3), R[1])       # no keys: no revision
    _both(pair, W[0], rpc.RangeRequest(key=b"\0", range_end=b"\0"), W[1])

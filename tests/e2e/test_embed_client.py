"""The embedding API's in-process client, on every store, against the gRPC face of the
same embedded adapter: the same revisions, reads, watch events and errors; etcd auth and
the client-certificate policy refuse it exactly as they refuse remote callers.

The adapter runs on the session's background reactor (tests/support/stores.py); ``call`` runs a
client method there and waits for its Deferred.
"""

import json
import time

import grpc
import pytest
from twisted.internet import defer

from etcdadapter import errors
from etcdadapter.embed import (DELETE, PUT, Compare, Delete, EmbeddedAdapter, EtcdError,
                               Get, KeyValue, PeerIdentity, Put, Txn)
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support import stores
from support.embedding import embedded  # noqa: F401 (the fixture)
from support.embedding import endpoint, event_tuple, kv_tuple
from support.servers import GrpcWatch, wait_until
from support.stores import call

KV = "/etcdserverpb.KV/"
AUTH = "/etcdserverpb.Auth/"


def grpc_ok(client, method, request, response_type):
    r = client.call(method, request, response_type)
    assert r.ok, r
    return r.response


def error_of(fn, *args, **kw):
    """The EtcdError ``fn(*args, **kw)`` (run on the reactor) fails with."""
    with pytest.raises(EtcdError) as info:
        call(fn, *args, **kw)
    return info.value


def collect(watch, n):
    """The next ``n`` events of an iterated watch (``async for`` under Twisted)."""
    async def take():
        out = []
        async for event in watch:
            out.append(event)
            if len(out) == n:
                break
        return out
    return call(lambda: defer.ensureDeferred(take()))


def test_same_revisions_reads_and_events_as_grpc(embedded):
    adapter = embedded()
    client = adapter.client()
    with servers.GrpcClient(endpoint(adapter)) as g:
        remote = GrpcWatch(g.channel)
        created = remote.create(key=b"/apisix/", range_end=b"/apisix0", prev_kv=True)
        seen = []
        w = call(lambda: client.watch("/apisix/", prefix=True, prev_kv=True,
                                      callback=seen.append))
        assert call(lambda: w.created) == created.header.revision == 1

        r1 = call(client.put, "/apisix/routes/1", '{"uri":"/a"}')
        assert r1 == (2, None)
        r2 = grpc_ok(g, KV + "Put", rpc.PutRequest(key=b"/apisix/routes/1", value=b"v2",
                                                   prev_kv=True), rpc.PutResponse)
        assert r2.header.revision == 3
        lease = call(client.lease_grant, 60)
        assert lease.ttl == 60 and lease.revision == 3
        r3 = call(client.put, "/apisix/upstreams/1", b"u", lease=lease.id, prev_kv=True)
        assert r3 == (4, None)
        t = call(client.txn, [Compare("/apisix/routes/2", "version", "==", 0)],
                 [Put("/apisix/routes/2", "r2"), Get("/apisix/routes/", prefix=True)],
                 [Delete("/apisix/", prefix=True)])
        assert (t.revision, t.succeeded) == (5, True)
        assert t.responses[0] == (5, None)
        assert [kv.key for kv in t.responses[1].kvs] == [b"/apisix/routes/1",
                                                        b"/apisix/routes/2"]
        t = call(client.txn, [Compare("/apisix/routes/", "version", ">", 0, prefix=True)],
                 [Delete("/apisix/routes/", prefix=True, prev_kv=True)])
        assert (t.revision, t.succeeded, t.responses[0].deleted) == (6, True, 2)
        assert [kv.value for kv in t.responses[0].prev_kvs] == [b"v2", b"r2"]
        assert call(client.lease_revoke, lease.id) == 7
        assert call(client.put, "/other", "x").revision == 8
        assert call(client.delete, "/apisix/nothing") == (8, 0, ())

        # Reads: the same answer as the gRPC face's.
        call(client.put, "/apisix/routes/3", "r3")                              # 9
        mine = call(client.get, "/", range_end="0", limit=1)
        theirs = grpc_ok(g, KV + "Range", rpc.RangeRequest(key=b"/", range_end=b"0",
                                                           limit=1), rpc.RangeResponse)
        assert mine.revision == theirs.header.revision == 9
        assert (mine.count, mine.more) == (theirs.count, theirs.more) == (2, True)
        assert [kv_tuple(kv) for kv in mine.kvs] == [kv_tuple(kv) for kv in theirs.kvs]
        assert mine.kv == KeyValue(b"/apisix/routes/3", b"r3", 9, 9, 1, 0)
        assert call(client.get, "/apisix/routes/1", revision=3).kv.value == b"v2"
        assert call(client.get, "/apisix/routes/1").kv is None
        assert call(client.get, "/", prefix=True, count_only=True)[2:] == (2, False)

        # Events: the in-process watch and the remote one saw the same, in order.
        expected = [
            (PUT, b"/apisix/routes/1", 2), (PUT, b"/apisix/routes/1", 3),
            (PUT, b"/apisix/upstreams/1", 4), (PUT, b"/apisix/routes/2", 5),
            (DELETE, b"/apisix/routes/1", 6), (DELETE, b"/apisix/routes/2", 6),
            (DELETE, b"/apisix/upstreams/1", 7), (PUT, b"/apisix/routes/3", 9)]
        theirs = [event_tuple(e) for e in remote.events(len(expected))]
        wait_until(lambda: len(seen) == len(expected), 20, "%d events" % len(expected))
        mine = [event_tuple(e) for e in seen]
        assert mine == theirs
        assert [(e.type, e.kv.key, e.revision) for e in seen] == expected
        assert seen[1].prev_kv.value == b'{"uri":"/a"}'
        assert seen[2].kv.lease == lease.id
        assert seen[6].prev_kv.lease == lease.id

        # A replay from revision 2 through the async iterator: the same events again.
        w2 = call(lambda: client.watch("/apisix/", prefix=True, prev_kv=True,
                                       start_revision=2))
        assert [event_tuple(e) for e in collect(w2, len(expected))] == theirs
        call(w2.cancel)
        assert call(lambda: w2.done) is None
        remote.close()
        call(w.cancel)
        assert w.ended and w.error is None


def test_errors_are_the_grpc_errors(embedded):
    adapter = embedded(max_txn_ops=2)
    client = adapter.client()
    call(client.put, "k", "v")
    cases = [
        (lambda: client.get(""), KV + "Range", rpc.RangeRequest(key=b"")),
        (lambda: client.get("k", revision=99), KV + "Range",
         rpc.RangeRequest(key=b"k", revision=99)),
        (lambda: client.put("k", "v", lease=12345), KV + "Put",
         rpc.PutRequest(key=b"k", value=b"v", lease=12345)),
        (lambda: client.txn(success=[Put("a", ""), Put("b", ""), Put("c", "")]),
         KV + "Txn", Txn(success=[Put("a", ""), Put("b", ""), Put("c", "")]).to_pb()),
        (lambda: client.txn(success=[Put("a", ""), Put("a", "")]), KV + "Txn",
         Txn(success=[Put("a", ""), Put("a", "")]).to_pb()),
        (lambda: client.lease_revoke(999), "/etcdserverpb.Lease/LeaseRevoke",
         rpc.LeaseRevokeRequest(ID=999)),
    ]
    expected = [errors.ErrKeyNotProvided, errors.ErrFutureRev, errors.ErrLeaseNotFound,
                errors.ErrTooManyOps, errors.ErrDuplicateKey, errors.ErrLeaseNotFound]
    with servers.GrpcClient(endpoint(adapter)) as g:
        for (mine, method, request), want in zip(cases, expected):
            e = error_of(mine)
            remote = g.call(method, request)
            assert (e.code, e.message) == (remote.code.value[0], remote.details), method
            assert e == want
    # Nothing of the above wrote anything.
    assert call(client.get, "k").revision == 2
    assert call(client.lease_keepalive, 999) == 0
    with pytest.raises(ValueError):
        client.get("k", "z", prefix=True)
    with pytest.raises(ValueError):
        Compare("k", "size", "==", 1).to_pb()


def test_watch_behind_a_compaction_and_a_stopped_adapter(embedded):
    adapter = embedded()
    client = adapter.client()
    for value in ("a", "b", "c"):
        call(client.put, "k", value)                                  # 2, 3, 4
    with servers.GrpcClient(endpoint(adapter)) as g:
        grpc_ok(g, KV + "Compact", rpc.CompactionRequest(revision=4),
                rpc.CompactionResponse)
    w = call(lambda: client.watch("k", start_revision=2))
    assert call(lambda: w.created) == 4
    e = error_of(lambda: w.done)
    assert e == errors.ErrCompacted and e.compact_revision == 4
    # The iterator ends with the same error.
    with pytest.raises(EtcdError) as info:
        collect(w, 1)
    assert info.value == errors.ErrCompacted
    # From the compact revision on: fine.
    w = call(lambda: client.watch("k", start_revision=4))
    assert [e.kv.value for e in collect(w, 1)] == [b"c"]
    # Stopping the adapter ends open watches cleanly, then calls fail with "stopped".
    call(adapter.stop)
    assert w.ended and call(lambda: w.done) is None
    assert collect(w, 1) == []
    assert error_of(client.get, "k") == errors.ErrStopped
    assert error_of(lambda: client.watch("k").created) == errors.ErrStopped


@pytest.mark.parametrize("store_kind", ["memory"])
def test_an_undrained_iterator_catches_up_from_history(embedded):
    # 600 events of 8 KiB (4.8 MiB) queue past the 4 MiB stream budget: the hub holds
    # back and the watch catches up from history once the host reads -- every event
    # once, in order.
    adapter = embedded()
    client = adapter.client()
    w = call(lambda: client.watch("big/", prefix=True))
    call(lambda: w.created)
    value = b"x" * 8192
    for i in range(600):
        call(client.put, "big/%04d" % i, value)
    assert w._queued_bytes < 4 * 1024 * 1024 + 100000
    events = collect(w, 600)
    assert [e.kv.key for e in events] == [b"big/%04d" % i for i in range(600)]
    assert [e.revision for e in events] == list(range(2, 602))


def test_etcd_auth_applies_to_the_in_process_client(embedded):
    adapter = embedded(auth_token_ttl=1)
    with servers.GrpcClient(endpoint(adapter)) as g:
        for method, request, response in [
                ("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw"),
                 rpc.AuthUserAddResponse),
                ("UserAdd", rpc.AuthUserAddRequest(name="alice", password="apw"),
                 rpc.AuthUserAddResponse),
                ("RoleAdd", rpc.AuthRoleAddRequest(name="ingress"),
                 rpc.AuthRoleAddResponse),
                ("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
                    name="ingress", perm=authpb.Permission(
                        key=b"/apisix/", range_end=b"/apisix0",
                        permType=authpb.Permission.READWRITE)),
                 rpc.AuthRoleGrantPermissionResponse),
                ("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
                    name="ingress", perm=authpb.Permission(
                        key=b"/b", permType=authpb.Permission.READ)),
                 rpc.AuthRoleGrantPermissionResponse),
                ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="alice",
                                                               role="ingress"),
                 rpc.AuthUserGrantRoleResponse),
                ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"),
                 rpc.AuthUserGrantRoleResponse),
                ("AuthEnable", rpc.AuthEnableRequest(), rpc.AuthEnableResponse)]:
            grpc_ok(g, AUTH + method, request, response)
        token = grpc_ok(g, AUTH + "Authenticate", rpc.AuthenticateRequest(
            name="alice", password="apw"), rpc.AuthenticateResponse).token

    anonymous = adapter.client()
    assert error_of(anonymous.put, "/apisix/x", "1") == errors.ErrUserEmpty
    assert error_of(anonymous.get, "/b") == errors.ErrUserEmpty
    w = call(lambda: anonymous.watch("/apisix/", prefix=True))
    assert error_of(lambda: w.done) == errors.ErrUserEmpty

    alice = adapter.client(user="alice", password="apw")
    assert call(alice.put, "/apisix/routes/1", "r1").revision > 0
    assert call(alice.get, "/apisix/", prefix=True).count == 1
    assert call(alice.get, "/b").kvs == ()
    assert error_of(alice.put, "/b", "x") == errors.ErrPermissionDenied
    assert error_of(alice.replace_prefix, "/", {}) == errors.ErrPermissionDenied
    assert error_of(alice.replace_prefix, "/b", {"/b": "x"}) == errors.ErrPermissionDenied
    replaced = call(alice.replace_prefix, "/apisix/routes/", {"/apisix/routes/2": "r2"})
    assert (replaced.created, replaced.updated, replaced.deleted) == (1, 0, 1)
    w = call(lambda: alice.watch("/c"))
    assert error_of(lambda: w.done) == errors.ErrPermissionDenied
    w = call(lambda: alice.watch("/apisix/", prefix=True))
    assert call(lambda: w.created) == replaced.revision
    call(w.cancel)

    assert error_of(adapter.client(user="alice", password="nope").get, "/b") == \
        errors.ErrAuthFailed
    assert call(adapter.client(token=token).get, "/b").kvs == ()
    assert error_of(adapter.client(token="bogus.1").get, "/b") == \
        errors.ErrInvalidAuthToken

    # The token expires (auth_token_ttl=1); the client authenticates again by itself.
    old = alice._token
    time.sleep(1.3)
    assert call(alice.get, "/apisix/routes/2").kv.value == b"r2"
    assert alice._token != old
    root = adapter.client(user="root", password="pw")
    assert call(root.replace_prefix, "/", {}).deleted == 1


@pytest.mark.parametrize("store_kind", ["memory"])
def test_client_certificate_policy_applies_to_identities(embedded, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [
        {"match": {"cn": "apisix"},
         "permissions": [{"key": "/apisix/", "prefix": True, "type": "READ"}]},
        {"match": {"dns": "controller.local"},
         "permissions": [{"key": "/apisix/", "prefix": True, "type": "READWRITE"}]},
    ], "default": "deny"}))
    adapter = embedded(client_cert_policy=str(policy))
    controller = adapter.client(identity=PeerIdentity("ctl", ("controller.local",)))
    apisix = adapter.client(identity=PeerIdentity("apisix"))
    nobody = adapter.client()

    replaced = call(controller.replace_prefix, "/apisix/routes/",
                    {"/apisix/routes/1": "r1", "/apisix/routes/2": "r2"})
    assert (replaced.revision, replaced.created) == (2, 2)
    assert error_of(controller.put, "/other", "x") == errors.ErrPermissionDenied
    assert call(apisix.get, "/apisix/", prefix=True).count == 2
    assert error_of(apisix.put, "/apisix/routes/3", "x") == errors.ErrPermissionDenied
    assert error_of(apisix.replace_prefix, "/apisix/routes/", {}) == \
        errors.ErrPermissionDenied
    assert error_of(nobody.get, "/apisix/routes/1") == errors.ErrPermissionDenied
    w = call(lambda: nobody.watch("/apisix/", prefix=True))
    assert error_of(lambda: w.created) == errors.ErrPermissionDenied
    seen = []
    w = call(lambda: apisix.watch("/apisix/", prefix=True, callback=seen.append))
    call(controller.delete, "/apisix/routes/1")
    assert [(e.type, e.kv.key, e.revision) for e in seen] == [
        (DELETE, b"/apisix/routes/1", 3)]
    # A remote caller without a certificate is refused the same way.
    with servers.GrpcClient(endpoint(adapter)) as g:
        r = g.call(KV + "Range", rpc.RangeRequest(key=b"/apisix/routes/2"),
                   rpc.RangeResponse)
        assert (r.code, r.details) == (grpc.StatusCode.PERMISSION_DENIED,
                                       errors.ErrPermissionDenied.message)


def test_a_failed_start_raises_and_leaves_nothing_running():
    first = call(lambda: EmbeddedAdapter(listen=["tcp:0:interface=127.0.0.1"],
                                         reactor=stores.reactor()))
    call(first.start)
    try:
        taken = "tcp:%d:interface=127.0.0.1" % first.port
        second = call(lambda: EmbeddedAdapter(
            listen=["tcp:0:interface=127.0.0.1", taken], reactor=stores.reactor()))
        with pytest.raises(Exception) as info:
            call(second.start)
        assert "Address already in use" in str(info.value)
        assert not second.running and second.service.ports == []
        assert error_of(second.client().get, "k") == errors.ErrStopped
        assert call(first.client().put, "k", "v").revision > 1     # the first one serves
    finally:
        call(first.stop)


@pytest.mark.parametrize("store_kind", ["memory"])
def test_a_watch_canceled_before_its_creation_fails_created_with_server_stopped(embedded):
    # Canceled while the client was still logging in: neither created nor an error to
    # report, so ``created`` fails with an ErrStopped instance -- under Twisted too (a
    # class there is no exception to raise).
    adapter = embedded()
    with servers.GrpcClient(endpoint(adapter)) as g:
        grpc_ok(g, AUTH + "UserAdd", rpc.AuthUserAddRequest(name="root", password="pw"),
                rpc.AuthUserAddResponse)
        grpc_ok(g, AUTH + "UserGrantRole", rpc.AuthUserGrantRoleRequest(
            user="root", role="root"), rpc.AuthUserGrantRoleResponse)
        grpc_ok(g, AUTH + "AuthEnable", rpc.AuthEnableRequest(), rpc.AuthEnableResponse)
    client = adapter.client(user="root", password="pw")

    def cancel_at_once():
        w = client.watch("k")
        w.cancel()
        return w.created
    e = error_of(cancel_at_once)
    assert type(e) is errors.ErrStopped
    assert (e.code, e.message) == (errors.StatusCode.UNAVAILABLE,
                                   "etcdserver: server stopped")

"""Maintenance: HashKV and Hash on every store, and who may call the admin RPCs.

HashKV is etcd's HashByRev: with the same history from the same first revision our
hash equals etcd's, so the differential test runs one history of puts, deletes,
multi-op txns, a lease revoke and compactions on a real etcd 3.4 and on the adapter
(each store kind, first revision 1) and compares every HashKV answer, by gRPC and
through `etcdctl endpoint hashkv`.
"""

import json
import subprocess
import time

import grpc
import pytest

from support import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.stores import _with_params, store_url
from support.auth import grpc_call, http_post, setup_steps, user_tokens
from support.tls import client_creds, https_post, pki, policy_server, tls_grpc  # noqa: F401

pytestmark = pytest.mark.adapter

TARGET_STORES = ("memory", "sqlite", "mariadb", "postgresql")

M = "/etcdserverpb.Maintenance/"


def _op(put=None, delete=None, value=b"", lease=0, end=b""):
    if put is not None:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=put, value=value, lease=lease))
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=delete,
                                                                     range_end=end))


# One history: (method, request) in order; "hash" = compare HashKV at every revision.
HISTORY = [
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"a", value=b"1")),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"b", value=b"2")),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"c", value=b"")),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"a", value=b"3")),
    ("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeRequest(key=b"b")),
    # several events in one revision: sub-revisions 0, 1, 2 (d and e survive the first
    # compaction untouched)
    ("/etcdserverpb.KV/Txn", rpc.TxnRequest(success=[
        _op(put=b"d", value=b"4"), _op(delete=b"c"), _op(put=b"e", value=b"5")])),
    ("/etcdserverpb.Lease/LeaseGrant", rpc.LeaseGrantRequest(ID=77, TTL=600)),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"g", value=b"6", lease=77)),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"f", value=b"7", lease=77)),
    ("/etcdserverpb.KV/Txn", rpc.TxnRequest(
        compare=[rpc.Compare(key=b"a", target=rpc.Compare.VALUE, value=b"nope")],
        failure=[_op(put=b"h", value=b"8"), _op(put=b"i", value=b"9")])),
    ("hash", None),
    ("/etcdserverpb.KV/Compact", rpc.CompactionRequest(revision=8, physical=True)),
    ("hash", None),
    ("/etcdserverpb.Lease/LeaseRevoke", rpc.LeaseRevokeRequest(ID=77)),     # f, g
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"e", value=b"10")),
    ("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeRequest(key=b"h", range_end=b"j")),
    ("hash", None),
    ("/etcdserverpb.KV/Compact", rpc.CompactionRequest(revision=12, physical=True)),
    ("hash", None),
    # No key live any more: etcd then counts whatever compaction kept.
    ("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeRequest(key=b"\0", range_end=b"\0")),
    ("hash", None),
    ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"z", value=b"11")),
    ("/etcdserverpb.KV/Compact", rpc.CompactionRequest(revision=15, physical=True)),
    ("hash", None),
]

_RESPONSES = {"Put": rpc.PutResponse, "DeleteRange": rpc.DeleteRangeResponse,
              "Txn": rpc.TxnResponse, "Compact": rpc.CompactionResponse,
              "LeaseGrant": rpc.LeaseGrantResponse, "LeaseRevoke": rpc.LeaseRevokeResponse}


def _hashkv(client, revision):
    r = client.call(M + "HashKV", rpc.HashKVRequest(revision=revision), rpc.HashKVResponse)
    if not r.ok:
        return r.error()
    return (r.response.hash, r.response.compact_revision, r.response.header.revision)


def _etcdctl_hashkv(server, *args):
    out = subprocess.run([servers.ETCDCTL_BIN, "--endpoints=" + server.endpoint,
                          "endpoint", "hashkv", "-w", "json"] + list(args),
                         capture_output=True, text=True, timeout=30,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]["HashKV"]


@pytest.fixture
def first_revision_one(target_store):
    """The adapter's store starts at revision 1, as a fresh etcd does."""
    return _with_params(target_store, {"initial_revision": 1})


def test_hashkv_matches_etcd(first_revision_one, start_servers):
    pair = start_servers(first_revision_one)
    assert pair.offset == 0
    clients = (pair.etcd_client, pair.target_client)
    compared = 0
    for method, request in HISTORY:
        if method != "hash":
            got = [c.call(method, request, _RESPONSES[method.rpartition("/")[2]])
                   for c in clients]
            assert all(r.ok for r in got), (method, got)
            continue
        current = servers.store_revision(pair.etcd_client)
        assert servers.store_revision(pair.target_client) == current
        for revision in [0, -3, current + 1] + list(range(1, current + 1)):
            want, got = (_hashkv(c, revision) for c in clients)
            assert got == want, (revision, want, got)
            compared += 1
    assert compared > 80
    # etcdctl's view of it; the hash changes with a write and is stable without one.
    ours = _etcdctl_hashkv(pair.target)
    assert ours["hash"] == _etcdctl_hashkv(pair.etcd)["hash"]
    assert ours["compact_revision"] == 15 and ours["header"]["revision"] == 15
    assert _etcdctl_hashkv(pair.target)["hash"] == ours["hash"]
    for c in clients:
        assert c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"y"), rpc.PutResponse).ok
    again = _etcdctl_hashkv(pair.target)
    assert again["hash"] != ours["hash"] and again["hash"] == _etcdctl_hashkv(pair.etcd)["hash"]
    # Hash (etcd: its whole database file) changes with writes too.
    h1 = pair.target_client.call(M + "Hash", rpc.HashRequest(), rpc.HashResponse).response
    assert h1.header.revision == 16 and h1.hash == again["hash"]
    assert pair.target_client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"x"),
                                   rpc.PutResponse).ok
    h2 = pair.target_client.call(M + "Hash", rpc.HashRequest(), rpc.HashResponse).response
    assert (h2.header.revision, h2.hash != h1.hash) == (17, True)


@pytest.mark.parametrize("kind", ["sqlite", "mariadb", "postgresql"])
def test_hashkv_is_the_same_on_two_adapters_of_one_database(request, tmp_path, kind):
    url, drop = store_url(kind, tmp_path)
    a, b = (servers.AdapterServer("hash-%s-%s" % (kind, n), store=url) for n in "ab")
    request.node._etcdadapter_servers = [a, b]
    try:
        servers.start_all([a, b])
        with servers.GrpcClient(a.endpoint) as ca, servers.GrpcClient(b.endpoint) as cb:
            for i in range(300):
                key = b"k%03d" % (i % 70)
                if i % 11 == 10:
                    r = ca.call("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeRequest(
                        key=key), rpc.DeleteRangeResponse)
                else:
                    r = (ca if i % 2 else cb).call("/etcdserverpb.KV/Put", rpc.PutRequest(
                        key=key, value=b"v%d" % i), rpc.PutResponse)
                assert r.ok, r
            rev = servers.store_revision(ca)
            first = _hashkv(ca, 0)
            assert first == _hashkv(cb, 0) == _hashkv(ca, 0)
            assert _hashkv(cb, rev - 100) == _hashkv(ca, rev - 100) != first
            assert ca.call("/etcdserverpb.KV/Compact", rpc.CompactionRequest(
                revision=rev - 150), rpc.CompactionResponse).ok
            # Compacted history no longer counts (etcd: members compare hashes at one
            # compact revision); both adapters still agree.
            compacted = _hashkv(cb, 0)
            assert compacted[1:] == (rev - 150, rev) and compacted[0] != first[0]
            assert _hashkv(ca, 0) == compacted
            assert _hashkv(ca, rev - 100) == _hashkv(cb, rev - 100)
            assert _hashkv(ca, rev - 150) == _hashkv(cb, rev - 150) == (
                "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
            assert cb.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"new"),
                           rpc.PutResponse).ok
            assert _hashkv(ca, 0)[0] != first[0]
            assert _hashkv(ca, 0) == _hashkv(cb, 0)
    finally:
        for s in (b, a):
            try:
                s.stop()
            finally:
                s.cleanup()
        drop()


def test_hashkv_of_a_big_memory_store_does_not_stall_the_server(request):
    """About 100,000 versions: the hash takes a while; meanwhile reads are answered."""
    server = servers.AdapterServer("hash-big")
    request.node._etcdadapter_servers = [server]
    server.start()
    try:
        with servers.GrpcClient(server.endpoint, timeout=120) as c:
            value = b"x" * 100
            txn = rpc.TxnRequest(success=[_op(put=b"big/%03d" % i, value=value)
                                          for i in range(100)])
            for _ in range(1000):
                assert c.call("/etcdserverpb.KV/Txn", txn, rpc.TxnResponse).ok
            done = []
            import threading

            def hash_it():
                t0 = time.monotonic()
                done.append((_hashkv(c, 0), time.monotonic() - t0))
            t = threading.Thread(target=hash_it)
            t.start()
            slowest = 0.0
            while t.is_alive():
                t0 = time.monotonic()
                servers.store_revision(c)
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.01)
            t.join()
            (result, took), = done
            assert isinstance(result[0], int), result
            print("HashKV over 100,000 versions: %.2fs; slowest concurrent read %.3fs"
                  % (took, slowest))
            assert slowest < max(0.5, took / 3), (took, slowest)
    finally:
        server.stop()
        server.cleanup()


# ---------------------------------------------------------------------------------------
# Admin only

USER_EMPTY = ("error", "INVALID_ARGUMENT", "etcdserver: user name is empty")
DENIED = ("error", "PERMISSION_DENIED", "etcdserver: permission denied")
INVALID_TOKEN = ("error", "UNAUTHENTICATED", "etcdserver: invalid auth token")


@pytest.fixture(scope="module")
def auth_server(request):
    server = servers.AdapterServer("maintenance-auth")
    request.module._etcdadapter_servers = [server]
    server.start()
    for method, req, _ in setup_steps():
        grpc_call(server, "Auth", method, req, None)
    server.tokens = user_tokens(server)
    yield server
    server.stop()
    server.cleanup()


def _maintenance(server, name, request, token):
    with grpc.insecure_channel(server.endpoint) as channel:
        call = channel.unary_unary(
            M + name, request_serializer=type(request).SerializeToString,
            response_deserializer=getattr(rpc, name + "Response").FromString)
        try:
            call(request, metadata=[("token", token)] if token else None, timeout=10)
            return "ok"
        except grpc.RpcError as e:
            return ("error", e.code().name, e.details())


def test_defragment_hash_and_hashkv_need_root(auth_server):
    """etcd 3.4.23 refuses them too (as gRPC Unknown "auth: permission denied"; we use
    etcd 3.5's codes)."""
    root, alice = auth_server.tokens["root"], auth_server.tokens["alice"]
    for name, request in (("Defragment", rpc.DefragmentRequest()),
                          ("Hash", rpc.HashRequest()), ("HashKV", rpc.HashKVRequest())):
        assert _maintenance(auth_server, name, request, None) == USER_EMPTY, name
        assert _maintenance(auth_server, name, request, alice) == DENIED, name
        assert _maintenance(auth_server, name, request, "bogus.1") == INVALID_TOKEN, name
        assert _maintenance(auth_server, name, request, root) == "ok", name
    # Status stays open (etcd 3.4).
    assert _maintenance(auth_server, "Status", rpc.StatusRequest(), None) == "ok"
    for path in ("/v3/maintenance/defragment", "/v3/maintenance/hash",
                 "/v3/maintenance/hashkv"):
        assert http_post(auth_server, path, {}, alice) == (403, {
            "error": "etcdserver: permission denied", "code": 7,
            "message": "etcdserver: permission denied"}), path
        status, doc = http_post(auth_server, path, {}, root)
        assert status == 200, (path, doc)
    # etcdctl, as an operator runs it.
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    base = [servers.ETCDCTL_BIN, "--endpoints=" + auth_server.endpoint]
    out = subprocess.run(base + ["--user", "alice:apw", "defrag"], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode != 0 and "etcdserver: permission denied" in out.stderr
    out = subprocess.run(base + ["--user", "root:pw", "defrag"], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 0 and "Finished defragmenting" in out.stdout, out.stderr
    out = subprocess.run(base + ["--user", "root:pw", "endpoint", "hashkv"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0 and out.stdout.startswith(auth_server.endpoint + ", "), \
        out.stderr


def _snapshot(server, token):
    """A whole Snapshot stream: ("ok", bytes received) or the error."""
    with grpc.insecure_channel(server.endpoint) as channel:
        call = channel.unary_stream(
            M + "Snapshot", request_serializer=rpc.SnapshotRequest.SerializeToString,
            response_deserializer=rpc.SnapshotResponse.FromString)
        try:
            received = b"".join(r.blob for r in call(
                rpc.SnapshotRequest(), metadata=[("token", token)] if token else None,
                timeout=10))
            return "ok", len(received)
        except grpc.RpcError as e:
            return ("error", e.code().name, e.details())


def test_snapshot_needs_root(auth_server):
    """As Defragment and Hash (etcd 3.4.23: gRPC Unknown "auth: permission denied")."""
    root, alice = auth_server.tokens["root"], auth_server.tokens["alice"]
    assert _snapshot(auth_server, None) == USER_EMPTY
    assert _snapshot(auth_server, alice) == DENIED
    assert _snapshot(auth_server, "bogus.1") == INVALID_TOKEN
    ok, size = _snapshot(auth_server, root)
    assert ok == "ok" and size % 4096 == 32          # pages, then etcd's SHA-256
    headers = {"Authorization": alice}
    resp, data = servers.http_request(auth_server, "POST", "/v3/maintenance/snapshot",
                                      b"{}", headers)
    assert (resp.status, json.loads(data)) == (403, {"error": {
        "grpc_code": 7, "http_code": 403, "message": "etcdserver: permission denied",
        "http_status": "Forbidden"}})


def test_certificate_policy_admin_only(policy_server, pki):
    # CN apisix may read /apisix/ only; the admin certificate has "all".
    for name, request in (("Defragment", rpc.DefragmentRequest()),
                          ("HashKV", rpc.HashKVRequest())):
        response_type = getattr(rpc, name + "Response")
        _, err = tls_grpc(policy_server, client_creds(pki, "client"), M + name, request,
                          response_type)
        assert err == (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        _, err = tls_grpc(policy_server, client_creds(pki, "admin"), M + name, request,
                          response_type)
        assert err is None
    status, doc = https_post(policy_server, pki, "client", "/v3/maintenance/defragment",
                              {})
    assert (status, doc["message"]) == (403, "etcdserver: permission denied")
    # Snapshot too (server streaming): refused to the client certificate, whole for admin.
    for who, expected in (("client", (grpc.StatusCode.PERMISSION_DENIED,
                                      "etcdserver: permission denied")), ("admin", None)):
        with grpc.secure_channel(policy_server.endpoint, client_creds(pki, who)) as ch:
            call = ch.unary_stream(M + "Snapshot",
                                   request_serializer=rpc.SnapshotRequest.SerializeToString,
                                   response_deserializer=rpc.SnapshotResponse.FromString)
            try:
                size = sum(len(r.blob) for r in call(rpc.SnapshotRequest(), timeout=10))
                err = None
            except grpc.RpcError as e:
                err = (e.code(), e.details())
        assert err == expected, who
        if expected is None:
            assert size % 4096 == 32

"""Leases under auth, on real adapter processes over gRPC and the JSON API.

* LeaseTimeToLive with ``keys`` shows the attached key names only to a caller who may
  read every one of them (CVE-2023-32082, fixed in etcd 3.4.26/3.5.9: the Debian 3.4.23
  reference still leaks them, so these tests state the fixed behaviour).
* A Put may attach a lease only if the caller may write every key already attached to it
  (etcd's checkLeasePuts; compared with etcd 3.4 in test_auth's differential steps); ours
  checks the puts inside a Txn too, which etcd does not.
* The same rules hold for client-certificate identities (``--client-cert-auth``: the CN
  is the user) and under a ``--client-cert-policy``.
"""

import base64

import grpc
import pytest

from support import servers
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.auth import (cn_server, enable_cn_users, grpc_call,  # noqa: F401 (cn_server)
                          http_post, setup_steps, user_tokens)
from support.tls import client_creds, https_post, pki, policy_server, tls_grpc  # noqa: F401

pytestmark = pytest.mark.adapter

SECRET = b"/secret/db-password-of-prod"
ROOT_LEASE = 7001               # holds SECRET (root's)
ALICE_LEASE = 7002              # holds /a/1 (alice may read and write /a/)
EMPTY_LEASE = 7003

USER_EMPTY = ("error", "INVALID_ARGUMENT", "etcdserver: user name is empty")
DENIED = ("error", "PERMISSION_DENIED", "etcdserver: permission denied")
HTTP_USER_EMPTY = (400, {"error": "etcdserver: user name is empty", "code": 3,
                         "message": "etcdserver: user name is empty"})
HTTP_DENIED = (403, {"error": "etcdserver: permission denied", "code": 7,
                     "message": "etcdserver: permission denied"})


def _b64(key):
    return base64.b64encode(key).decode()


def _call(server, service, name, request, token=None):
    """(kind, ...) as support.auth.grpc_call, but the response message itself when OK."""
    response_type = getattr(rpc, type(request).__name__.replace("Request", "Response"))
    with grpc.insecure_channel(server.endpoint) as channel:
        call = channel.unary_unary("/etcdserverpb.%s/%s" % (service, name),
                                   request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_type.FromString)
        try:
            return ("ok", call(request, metadata=[("token", token)] if token else None,
                               timeout=10))
        except grpc.RpcError as e:
            return ("error", e.code().name, e.details())


def _ttl(server, lease_id, token=None, keys=True):
    got = _call(server, "Lease", "LeaseTimeToLive",
                rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), token)
    if got[0] == "ok":
        return ("ok", list(got[1].keys), got[1].grantedTTL)
    return got


@pytest.fixture(scope="module")
def auth_server(request):
    """An adapter with users root and alice (readwrite /a/, read /b), auth on, and
    three leases: root's holding SECRET, alice's holding /a/1, and an empty one."""
    server = servers.AdapterServer("lease-auth")
    request.module._etcdadapter_servers = [server]
    server.start()
    for method, req, _ in setup_steps():
        grpc_call(server, "Auth", method, req, None)
    tokens = user_tokens(server)
    root, alice = tokens["root"], tokens["alice"]
    for lease_id in (ROOT_LEASE, ALICE_LEASE, EMPTY_LEASE):
        assert _call(server, "Lease", "LeaseGrant",
                     rpc.LeaseGrantRequest(ID=lease_id, TTL=600))[0] == "ok"
    assert _call(server, "KV", "Put", rpc.PutRequest(key=SECRET, value=b"hunter2",
                                                     lease=ROOT_LEASE), root)[0] == "ok"
    assert _call(server, "KV", "Put", rpc.PutRequest(key=b"/a/1", value=b"x",
                                                     lease=ALICE_LEASE), alice)[0] == "ok"
    server.tokens = tokens
    yield server
    server.stop()
    server.cleanup()


def test_time_to_live_keys_need_read_permission_over_grpc(auth_server):
    root, alice = auth_server.tokens["root"], auth_server.tokens["alice"]
    assert _ttl(auth_server, ROOT_LEASE, root) == ("ok", [SECRET], 600)
    assert _ttl(auth_server, ROOT_LEASE) == USER_EMPTY
    assert _ttl(auth_server, ROOT_LEASE, alice) == DENIED
    assert _ttl(auth_server, ROOT_LEASE, "bogus.1") == (
        "error", "UNAUTHENTICATED", "etcdserver: invalid auth token")
    # Her own lease's keys she may see; an empty or unknown lease shows nothing anyway,
    # but etcd still wants a user.
    assert _ttl(auth_server, ALICE_LEASE, alice) == ("ok", [b"/a/1"], 600)
    assert _ttl(auth_server, EMPTY_LEASE, alice) == ("ok", [], 600)
    assert _ttl(auth_server, 999, alice) == ("ok", [], 0)
    assert _ttl(auth_server, EMPTY_LEASE) == USER_EMPTY
    # Without keys nothing is revealed: no token needed (etcd 3.4).
    assert _ttl(auth_server, ROOT_LEASE, keys=False) == ("ok", [], 600)
    # LeaseLeases lists IDs only, as etcd 3.4 (no token needed): they no longer lead to
    # the key names.
    got = _call(auth_server, "Lease", "LeaseLeases", rpc.LeaseLeasesRequest())
    assert got[0] == "ok" and {l.ID for l in got[1].leases} >= {ROOT_LEASE, ALICE_LEASE}


def test_time_to_live_keys_need_read_permission_over_http(auth_server):
    root, alice = auth_server.tokens["root"], auth_server.tokens["alice"]
    body = {"ID": str(ROOT_LEASE), "keys": True}
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        # The report of issue 12: no header at all used to list the secret's name.
        assert http_post(auth_server, path, body) == HTTP_USER_EMPTY
        assert http_post(auth_server, path, body, alice) == HTTP_DENIED
        status, doc = http_post(auth_server, path, body, root)
        assert (status, doc["keys"]) == (200, [_b64(SECRET)])
        status, doc = http_post(auth_server, path, {"ID": str(ROOT_LEASE)})
        assert (status, doc["grantedTTL"], "keys" in doc) == (200, "600", False)
    status, doc = http_post(auth_server, "/v3/lease/timetolive",
                        {"ID": str(ALICE_LEASE), "keys": True}, alice)
    assert (status, doc["keys"]) == (200, [_b64(b"/a/1")])
    # ...while a Range on the key is refused, as it always was.
    assert http_post(auth_server, "/v3/kv/range", {"key": _b64(SECRET)}) == HTTP_USER_EMPTY


def test_put_may_not_attach_a_lease_holding_keys_the_caller_cannot_write(auth_server):
    root, alice = auth_server.tokens["root"], auth_server.tokens["alice"]
    mine = rpc.PutRequest(key=b"/a/2", value=b"v", lease=ROOT_LEASE)
    assert _call(auth_server, "KV", "Put", mine, alice) == DENIED
    assert http_post(auth_server, "/v3/kv/put", {"key": _b64(b"/a/2"), "value": "dg==",
                                             "lease": str(ROOT_LEASE)}, alice) == HTTP_DENIED
    # The same put inside a txn (either branch, nested too): refused as well (etcd lets
    # it through).
    for txn in (rpc.TxnRequest(success=[rpc.RequestOp(request_put=mine)]),
                rpc.TxnRequest(compare=[rpc.Compare(key=b"/a/1", target=rpc.Compare.VERSION,
                                                    version=99)],
                               failure=[rpc.RequestOp(request_txn=rpc.TxnRequest(
                                   success=[rpc.RequestOp(request_put=mine)]))])):
        assert _call(auth_server, "KV", "Txn", txn, alice) == DENIED
    assert http_post(auth_server, "/v3/kv/txn", {"success": [{"request_put": {
        "key": _b64(b"/a/2"), "lease": str(ROOT_LEASE)}}]}, alice) == HTTP_DENIED
    assert _ttl(auth_server, ROOT_LEASE, root) == ("ok", [SECRET], 600)    # unchanged
    # Leases whose keys she may write, or with no keys, are hers to use.
    for lease_id in (ALICE_LEASE, EMPTY_LEASE):
        put = rpc.PutRequest(key=b"/a/3", value=b"v", lease=lease_id)
        assert _call(auth_server, "KV", "Put", put, alice)[0] == "ok"
        assert _call(auth_server, "KV", "Txn", rpc.TxnRequest(success=[rpc.RequestOp(
            request_put=put)]), alice)[0] == "ok"
    assert _call(auth_server, "KV", "Put", rpc.PutRequest(key=b"/a/3", lease=4242),
                 alice) == ("error", "NOT_FOUND", "etcdserver: requested lease not found")
    # root may attach anything.
    assert _call(auth_server, "KV", "Put", rpc.PutRequest(key=b"/r", lease=ALICE_LEASE),
                 root)[0] == "ok"
    assert _call(auth_server, "KV", "Put", rpc.PutRequest(key=b"/a/3", lease=ALICE_LEASE),
                 alice) == DENIED                     # now it also holds /r
    # Without a user the usual error comes first.
    assert _call(auth_server, "KV", "Put", mine) == USER_EMPTY


def test_client_certificate_users(cn_server, pki):
    """--client-cert-auth: the CN "apisix" is the user, without a token."""
    ops = client_creds(pki, "admin")            # CN ops
    apisix = client_creds(pki, "client")        # CN apisix
    enable_cn_users(cn_server, ops, "gw", authpb.Permission.READWRITE)
    _check_cert_identities(cn_server, pki, ops, apisix)


def test_client_certificate_policy(policy_server, pki):
    """--client-cert-policy: CN apisix may read /apisix/ only."""
    _check_cert_identities(policy_server, pki, client_creds(pki, "admin"),
                           client_creds(pki, "client"), may_write=False)


def _check_cert_identities(server, pki, ops, apisix, may_write=True):
    denied = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    for lease_id, key in ((8001, SECRET), (8002, b"/apisix/routes/1")):
        _, err = tls_grpc(server, ops, "/etcdserverpb.Lease/LeaseGrant",
                          rpc.LeaseGrantRequest(ID=lease_id, TTL=600),
                          rpc.LeaseGrantResponse)
        assert err is None
        _, err = tls_grpc(server, ops, "/etcdserverpb.KV/Put",
                          rpc.PutRequest(key=key, value=b"v", lease=lease_id),
                          rpc.PutResponse)
        assert err is None
    ttl = rpc.LeaseTimeToLiveRequest(ID=8001, keys=True)
    got, err = tls_grpc(server, ops, "/etcdserverpb.Lease/LeaseTimeToLive", ttl,
                        rpc.LeaseTimeToLiveResponse)
    assert err is None and list(got.keys) == [SECRET]
    assert tls_grpc(server, apisix, "/etcdserverpb.Lease/LeaseTimeToLive", ttl,
                    rpc.LeaseTimeToLiveResponse)[1] == denied
    status, doc = https_post(server, pki, "client", "/v3/lease/timetolive",
                              {"ID": "8001", "keys": True})
    assert (status, doc["message"]) == (403, "etcdserver: permission denied")
    got, err = tls_grpc(server, apisix, "/etcdserverpb.Lease/LeaseTimeToLive",
                        rpc.LeaseTimeToLiveRequest(ID=8002, keys=True),
                        rpc.LeaseTimeToLiveResponse)
    assert err is None and list(got.keys) == [b"/apisix/routes/1"]
    # Attaching the secret's lease to a key it may write: refused.
    _, err = tls_grpc(server, apisix, "/etcdserverpb.KV/Put",
                      rpc.PutRequest(key=b"/apisix/routes/2", lease=8001), rpc.PutResponse)
    assert err == denied
    _, err = tls_grpc(server, apisix, "/etcdserverpb.KV/Put",
                      rpc.PutRequest(key=b"/apisix/routes/2", lease=8002), rpc.PutResponse)
    assert (err is None) == may_write, err

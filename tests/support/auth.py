"""etcd auth from outside: the user/role set-up the auth tests share, Auth and KV calls over
gRPC and the JSON gateway with a token, the users' tokens, and an adapter that takes the
user from the client certificate's CN."""

import json

import grpc
import pytest

from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support.tls import client_creds, tls_grpc


def setup_steps():
    """(method, request, None) steps: users root and alice, role r1, auth enabled (the
    first AuthEnable fails: root lacks the root role)."""
    P = authpb.Permission
    return [
        ("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw"), None),
        ("UserAdd", rpc.AuthUserAddRequest(name="alice", password="apw"), None),
        ("RoleAdd", rpc.AuthRoleAddRequest(name="r1"), None),
        ("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
            name="r1", perm=P(key=b"/a/", range_end=b"/a0", permType=P.READWRITE)), None),
        ("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
            name="r1", perm=P(key=b"/b", permType=P.READ)), None),
        ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="alice", role="r1"), None),
        ("AuthEnable", rpc.AuthEnableRequest(), None),
        ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"), None),
        ("AuthEnable", rpc.AuthEnableRequest(), None),
    ]


MESSAGES = {m: m for m in ("AuthEnable", "AuthDisable", "Authenticate")}


def _types(method):
    service, name = method
    if service != "Auth":
        table = {"Range": rpc.RangeRequest, "Put": rpc.PutRequest, "Txn": rpc.TxnRequest,
                 "DeleteRange": rpc.DeleteRangeRequest,
                 "LeaseGrant": rpc.LeaseGrantRequest, "Status": rpc.StatusRequest}
        req = table[name]
        return getattr(rpc, req.__name__.replace("Request", "Response"))
    message = name if name in MESSAGES else "Auth" + name
    return getattr(rpc, message + "Response")


def grpc_call(server, service, name, request, token, offset=0, metadata=None):
    """("error", code, details), ("token", issued?), or ("ok", the response without its
    header, serialized) of one call with ``token``."""
    with grpc.insecure_channel(server.endpoint) as channel:
        call = channel.unary_unary("/etcdserverpb.%s/%s" % (service, name),
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=_types((service, name)).FromString)
        if metadata is None and token:
            metadata = [("token", token)]
        try:
            response = call(request, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return ("error", e.code().name, e.details())
    response = servers.normalise_response(response, offset)
    response.ClearField("header")
    if name == "Authenticate":
        return ("token", bool(response.token))
    if name in ("Status", "LeaseGrant"):     # allowed without a token: that is the point
        return ("ok", True)
    return ("ok", response.SerializeToString(deterministic=True))


def user_tokens(server):
    """{"root": token, "alice": token}."""
    out = {}
    for user, password in (("root", "pw"), ("alice", "apw")):
        with grpc.insecure_channel(server.endpoint) as channel:
            call = channel.unary_unary(
                "/etcdserverpb.Auth/Authenticate",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc.AuthenticateResponse.FromString)
            out[user] = call(rpc.AuthenticateRequest(name=user, password=password),
                             timeout=10).token
    return out


def http_post(server, path, body, token=None, header="Authorization"):
    """(status, JSON document without its header) of a gateway POST with ``token``."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers[header] = token
    resp, data = servers.http_request(server, "POST", path, json.dumps(body), headers)
    doc = json.loads(data.decode("utf-8"))
    doc.pop("header", None)
    return resp.status, doc


@pytest.fixture(scope="module")
def cn_server(pki):
    """An adapter requiring client certificates (the user is the certificate's CN)."""
    server = servers.AdapterServer("auth-cn", extra_args=[
        "--cert-file", pki["server"][0], "--key-file", pki["server"][1],
        "--trusted-ca-file", pki["ca"], "--client-cert-auth"])
    server.credentials = client_creds(pki, "admin")
    server.start()
    yield server
    server.stop()
    server.cleanup()


def enable_cn_users(server, ops, role, permission):
    """Over TLS as ``ops`` (CN ops): users root and ops (both root), apisix with ``role``
    granting ``permission`` on /apisix/, then auth on -- the users the certificates'
    CNs name (``cn_server``)."""
    for method, request in (
            ("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw")),
            ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root")),
            ("UserAdd", rpc.AuthUserAddRequest(name="ops", password="x")),
            ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="ops", role="root")),
            ("UserAdd", rpc.AuthUserAddRequest(name="apisix", password="x")),
            ("RoleAdd", rpc.AuthRoleAddRequest(name=role)),
            ("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
                name=role, perm=authpb.Permission(key=b"/apisix/", range_end=b"/apisix0",
                                                  permType=permission))),
            ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="apisix", role=role)),
            ("AuthEnable", rpc.AuthEnableRequest())):
        name = method if method in MESSAGES else "Auth" + method
        _, err = tls_grpc(server, ops, "/etcdserverpb.Auth/" + method, request,
                          getattr(rpc, name + "Response"))
        assert err is None, (method, err)

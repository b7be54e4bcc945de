"""TLS for the tests: a module's PKI (a CA and the certificates the tests present), gRPC
client credentials, a unary call over TLS, an HTTPS POST, and an adapter that requires
client certificates and applies a certificate policy."""

import http.client
import json
import ssl

import grpc
import pytest

from support import servers
from support.certs import CA, read


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """{"ca": path, name: (cert, key)}: server, server2 (renewed), client (CN apisix),
    admin (DNS admin.example), and stranger (from another CA)."""
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d)
    p = {"dir": str(d), "ca": ca.path}
    # serverAuth only: we never reuse the server certificate as a client certificate.
    p["server"] = ca.issue("server", "etcd-adapter", "server", dns=["localhost"],
                           ips=["127.0.0.1"])[:2]
    p["client"] = ca.issue("client", "apisix", "client", dns=["apisix.example"])[:2]
    other = CA(tmp_path_factory.mktemp("other-pki"), cn="someone else's CA")
    p["stranger"] = other.issue("stranger", "apisix", "client")[:2]
    p["server2"] = ca.issue("server2", "etcd-adapter-renewed", "server",
                            ips=["127.0.0.1"])[:2]
    p["admin"] = ca.issue("admin", "ops", "client", dns=["admin.example"])[:2]
    return p


POLICY = {"rules": [
    {"match": {"cn": "apisix"},
     "permissions": [{"key": "/apisix/", "prefix": True, "type": "READ"}]},
    {"match": {"dns": "admin.example"}, "permissions": "all"}]}


@pytest.fixture(scope="module")
def policy_server(pki, tmp_path_factory):
    """An adapter requiring client certificates, with POLICY as its certificate policy."""
    d = tmp_path_factory.mktemp("policy")
    path = str(d / "policy.json")
    with open(path, "w") as f:
        json.dump(POLICY, f)
    server = servers.AdapterServer("policy", extra_args=[
        "--cert-file", pki["server"][0], "--key-file", pki["server"][1],
        "--trusted-ca-file", pki["ca"], "--client-cert-auth", "--client-cert-policy", path])
    server.credentials = client_creds(pki, "admin")
    server.start()
    yield server
    server.stop()
    server.cleanup()


def client_creds(pki, who):
    """gRPC credentials presenting ``pki[who]`` and trusting the PKI's CA."""
    cert, key = pki[who]
    return grpc.ssl_channel_credentials(read(pki["ca"]), read(key), read(cert))


def tls_grpc(server, creds, method, request, response_type):
    """(response, None) or (None, (code, details)) of one unary call over TLS."""
    with grpc.secure_channel(server.endpoint, creds) as ch:
        call = ch.unary_unary(method, request_serializer=type(request).SerializeToString,
                              response_deserializer=response_type.FromString)
        try:
            return call(request, timeout=5), None
        except grpc.RpcError as e:
            return None, (e.code(), e.details())


def https_post(server, pki, who, path, body):
    """(status, JSON document) of a POST as ``pki[who]`` (a watch: its first line)."""
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.load_cert_chain(*pki[who])
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    conn.request("POST", path, body=json.dumps(body).encode())
    resp = conn.getresponse()
    if path == "/v3/watch":         # a stream: only its first line
        data = b""
        while not data.endswith(b"\n"):
            data += resp.read(1)
    else:
        data = resp.read()
    conn.close()
    return resp.status, json.loads(data)

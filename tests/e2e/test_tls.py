"""TLS and mTLS on the one client port, with real clients: grpcio, etcdctl, Python's ssl
(with and without ALPN, like APISIX's OpenResty), and certificate reload on SIGHUP."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import grpc
import pytest

from support import servers
from support.certs import read
from support.tls import client_creds, https_post, pki, policy_server, tls_grpc  # noqa: F401
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter


def _start(pki, label, mtls, cert=None):
    cert_path, key_path = cert or pki["server"]
    args = ["--cert-file", cert_path, "--key-file", key_path]
    if mtls:
        args += ["--trusted-ca-file", pki["ca"], "--client-cert-auth"]
    server = servers.AdapterServer(label, extra_args=args)
    client = pki["client"] if mtls else (None, None)
    server.credentials = grpc.ssl_channel_credentials(
        read(pki["ca"]), read(client[1]) if client[1] else None,
        read(client[0]) if client[0] else None)
    server.start()
    return server


def _serving(pki, label, mtls):
    server = _start(pki, label, mtls)
    yield server
    server.stop()
    server.cleanup()


@pytest.fixture(scope="module")
def tls_server(pki):
    yield from _serving(pki, "tls", mtls=False)


@pytest.fixture(scope="module")
def mtls_server(pki):
    yield from _serving(pki, "mtls", mtls=True)


def _tls_http(server, pki, path="/version", alpn=None, client=None, sock=None):
    """GET over TLS with Python's ssl; returns (status, body, negotiated ALPN, socket)."""
    if sock is None:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        if client:
            ctx.load_cert_chain(client[0], client[1])
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body), sock.selected_alpn_protocol(), sock


def _etcdctl(server, pki, *args, client=True):
    cmd = [servers.ETCDCTL_BIN, "--endpoints=https://127.0.0.1:%d" % server.port,
           "--cacert", pki["ca"], "--dial-timeout=3s", "--command-timeout=5s"]
    if client:
        cmd += ["--cert", pki["client"][0], "--key", pki["client"][1]]
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env,
                          timeout=30)


def test_grpc_over_tls(tls_server):
    with grpc.secure_channel(tls_server.endpoint, tls_server.credentials) as ch:
        put = ch.unary_unary("/etcdserverpb.KV/Put",
                             request_serializer=rpc.PutRequest.SerializeToString,
                             response_deserializer=rpc.PutResponse.FromString)
        rng = ch.unary_unary("/etcdserverpb.KV/Range",
                             request_serializer=rpc.RangeRequest.SerializeToString,
                             response_deserializer=rpc.RangeResponse.FromString)
        rev = put(rpc.PutRequest(key=b"tls", value=b"yes"), timeout=5).header.revision
        got = rng(rpc.RangeRequest(key=b"tls"), timeout=5)
    assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [(b"tls", b"yes", rev)]


@pytest.mark.parametrize("offer,expected", [(None, None), (["h2", "http/1.1"], "h2"),
                                            (["http/1.1"], "http/1.1"),
                                            (["spdy/3"], None)])
def test_alpn(tls_server, pki, offer, expected):
    if expected == "h2":
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.set_alpn_protocols(offer)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_server.port)),
                             server_hostname="127.0.0.1") as s:
            assert s.selected_alpn_protocol() == "h2"
        return
    # No ALPN (APISIX's OpenResty, LuaSec) or http/1.1: HTTP/1.1 JSON over TLS.
    status, body, negotiated, sock = _tls_http(tls_server, pki, alpn=offer)
    sock.close()
    assert (status, negotiated) == (200, expected)
    assert body["etcdcluster"] == "3.5.0"


def test_etcdctl_over_tls(tls_server, pki):
    r = _etcdctl(tls_server, pki, "put", "k", "v", client=False)
    assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    r = _etcdctl(tls_server, pki, "get", "k", client=False)
    assert r.stdout.split() == ["k", "v"]
    r = _etcdctl(tls_server, pki, "member", "list", "-w", "json", client=False)
    urls = json.loads(r.stdout)["members"][0]["clientURLs"]
    assert urls == ["https://127.0.0.1:%d" % tls_server.port]


def test_plaintext_client_on_a_tls_port_is_refused(tls_server):
    with grpc.insecure_channel(tls_server.endpoint) as ch:
        call = ch.unary_unary("/etcdserverpb.KV/Range",
                              request_serializer=rpc.RangeRequest.SerializeToString,
                              response_deserializer=rpc.RangeResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(rpc.RangeRequest(key=b"k"), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_certificate_from_the_ca(mtls_server, pki):
    r = _etcdctl(mtls_server, pki, "put", "m", "1")
    assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    assert _etcdctl(mtls_server, pki, "get", "m").stdout.split() == ["m", "1"]
    r = _etcdctl(mtls_server, pki, "get", "m", client=False)
    assert r.returncode != 0 and "m\n1" not in r.stdout
    status, body, _, sock = _tls_http(mtls_server, pki, client=pki["client"])
    sock.close()
    assert status == 200
    for client in (None, pki["stranger"]):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _tls_http(mtls_server, pki, client=client)
    # Still serving.
    status, _, _, sock = _tls_http(mtls_server, pki, client=pki["client"])
    sock.close()
    assert status == 200


def _server_cn(server, pki):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                         server_hostname="127.0.0.1") as s:
        cert = s.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def test_sighup_reloads_certificates_and_keeps_connections(pki, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    shutil.copy(pki["server"][0], cert)
    shutil.copy(pki["server"][1], key)
    server = _start(pki, "reload", mtls=False, cert=(cert, key))
    try:
        assert _server_cn(server, pki) == "etcd-adapter"
        status, _, _, old = _tls_http(server, pki)
        assert status == 200
        shutil.copy(pki["server2"][0], cert)
        shutil.copy(pki["server2"][1], key)
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _server_cn(server, pki) != "etcd-adapter-renewed":
            assert time.monotonic() < deadline, "certificate not reloaded"
            time.sleep(0.1)
        # The connection made before the reload still works.
        assert _tls_http(server, pki, sock=old)[0] == 200
        old.close()
        # A broken file is not taken: the previous certificate stays in use.
        with open(cert, "w") as f:
            f.write("not a certificate")
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS reload failed" not in server.log_text():
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        assert _server_cn(server, pki) == "etcd-adapter-renewed"
        assert server.alive()
    finally:
        server.stop()
        server.cleanup()


def test_bad_tls_options_are_usage_errors(pki, tmp_path):
    from twisted.python import usage

    from etcdadapter import tap
    for args in (["--cert-file", pki["server"][0]],
                 ["--cert-file", pki["server"][0], "--key-file", pki["client"][1]],
                 ["--cert-file", pki["server"][0], "--key-file", pki["server"][1],
                  "--client-cert-auth"],
                 ["--cert-file", str(tmp_path / "missing.pem"), "--key-file",
                  pki["server"][1]]):
        with pytest.raises(usage.UsageError):
            tap.Options().parseOptions(args)


# -- the client-certificate policy, on both faces -------------------------------------


DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


def test_policy_applies_identically_to_grpc_http_and_watches(policy_server, pki):
    import base64
    admin, reader = client_creds(pki, "admin"), client_creds(pki, "client")
    r, err = tls_grpc(policy_server, admin, "/etcdserverpb.KV/Put",
                   rpc.PutRequest(key=b"/apisix/routes/1", value=b"r1"), rpc.PutResponse)
    assert err is None
    # The reader (CN apisix) reads /apisix/ over gRPC ...
    got, err = tls_grpc(policy_server, reader, "/etcdserverpb.KV/Range",
                     rpc.RangeRequest(key=b"/apisix/", range_end=b"/apisix0"),
                     rpc.RangeResponse)
    assert err is None and [kv.value for kv in got.kvs] == [b"r1"]
    # ... but may not write there, nor read elsewhere.
    for method, req, resp in (
            ("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"/apisix/routes/1"),
             rpc.PutResponse),
            ("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"/secret"), rpc.RangeResponse),
            ("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"/apisix/", range_end=b"\0"),
             rpc.RangeResponse),
            ("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeRequest(key=b"/apisix/routes/1"),
             rpc.DeleteRangeResponse),
            ("/etcdserverpb.KV/Txn", rpc.TxnRequest(compare=[rpc.Compare(key=b"/secret")]),
             rpc.TxnResponse),
            ("/etcdserverpb.KV/Compact", rpc.CompactionRequest(revision=1),
             rpc.CompactionResponse)):
        assert tls_grpc(policy_server, reader, method, req, resp)[1] == DENIED, method
    # The same over HTTP/JSON: 403 with etcd's body; reads of /apisix/ work.
    k = base64.b64encode(b"/apisix/routes/1").decode()
    assert https_post(policy_server, pki, "client", "/v3/kv/put", {"key": k}) == (403, {
        "error": "etcdserver: permission denied", "code": 7,
        "message": "etcdserver: permission denied"})
    status, body = https_post(policy_server, pki, "client", "/v3/kv/range", {"key": k})
    assert status == 200 and body["kvs"][0]["value"] == base64.b64encode(b"r1").decode()
    status, body = https_post(policy_server, pki, "client", "/v3/kv/range",
                               {"key": base64.b64encode(b"/secret").decode()})
    assert (status, body["code"]) == (403, 7)
    # Watches: allowed inside, created-then-canceled outside (etcd 3.5.6+'s shape).
    status, first = https_post(policy_server, pki, "client", "/v3/watch", {
        "create_request": {"key": base64.b64encode(b"/secret").decode()}})
    assert status == 200
    assert first["result"]["created"] and first["result"]["canceled"]
    assert first["result"]["watch_id"] == "-1"
    assert first["result"]["cancel_reason"] == (
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied")
    with grpc.secure_channel(policy_server.endpoint, reader) as ch:
        from support.watch import WatchSession
        w = WatchSession(ch)
        w.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=b"/apisix/", range_end=b"/apisix0")))
        w.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"/secret")))
        got = w.collect(2, timeout=10)
        w.close()
    assert got[0].created and not got[0].canceled and got[0].watch_id == 0
    assert (got[1].created, got[1].canceled, got[1].watch_id) == (True, True, -1)
    # Revoking a lease deletes its keys: the reader needs write permission on them.
    lease, _ = tls_grpc(policy_server, admin, "/etcdserverpb.Lease/LeaseGrant",
                     rpc.LeaseGrantRequest(TTL=60), rpc.LeaseGrantResponse)
    tls_grpc(policy_server, admin, "/etcdserverpb.KV/Put",
          rpc.PutRequest(key=b"/apisix/x", lease=lease.ID), rpc.PutResponse)
    assert tls_grpc(policy_server, reader, "/etcdserverpb.Lease/LeaseRevoke",
                 rpc.LeaseRevokeRequest(ID=lease.ID), rpc.LeaseRevokeResponse)[1] == DENIED
    assert tls_grpc(policy_server, admin, "/etcdserverpb.Lease/LeaseRevoke",
                 rpc.LeaseRevokeRequest(ID=lease.ID), rpc.LeaseRevokeResponse)[1] is None

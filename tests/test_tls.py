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

import servers
from certs import CA, read
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
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
    return p


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


@pytest.fixture(scope="module")
def tls_server(pki):
    server = _start(pki, "tls", mtls=False)
    yield server
    server.stop()
    server.cleanup()


@pytest.fixture(scope="module")
def mtls_server(pki):
    server = _start(pki, "mtls", mtls=True)
    yield server
    server.stop()
    server.cleanup()


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

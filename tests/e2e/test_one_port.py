"""One listening port, two faces: gRPC over h2c and HTTP/1.1, against the real daemon."""

import http.client
import json
import socket

import grpc
import pytest

from support import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc


_get = servers.http_request


def test_version_and_health_over_http1(adapter):
    resp, data = _get(adapter, "GET", "/version")
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(data) == {"etcdserver": "3.5.17", "etcdcluster": "3.5.0"}
    resp, data = _get(adapter, "GET", "/health")
    assert resp.status == 200
    assert json.loads(data) == {"health": "true", "reason": ""}


def test_unknown_path_is_json_404_and_wrong_method_405(adapter):
    resp, data = _get(adapter, "GET", "/nope")
    assert resp.status == 404
    assert json.loads(data)["message"] == "Not Found"
    resp, data = _get(adapter, "POST", "/version", body=b"{}")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET"


def test_keep_alive_serves_several_requests_on_one_connection(adapter):
    conn = http.client.HTTPConnection("127.0.0.1", adapter.port, timeout=5)
    for _ in range(3):
        resp, data = _get(adapter, "GET", "/version", conn=conn)
        assert resp.status == 200 and b"etcdcluster" in data
    conn.close()


def test_pipelined_http1_requests(adapter):
    s = socket.create_connection(("127.0.0.1", adapter.port), timeout=5)
    s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" * 2
              + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.count(b'"etcdcluster":"3.5.0"') == 2
    assert data.endswith(b'{"health":"true","reason":""}')


def test_grpc_on_the_same_port(adapter):
    with servers.GrpcClient(adapter.endpoint) as client:
        p = client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"one-port", value=b"v"),
                        rpc.PutResponse).response
        r = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"one-port"),
                        rpc.RangeResponse).response
        assert r.kvs[0].value == b"v"
        assert r.kvs[0].mod_revision == p.header.revision == r.header.revision


def test_garbage_preface_does_not_hurt_the_server(adapter):
    for garbage in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"PRI * HTTP/1.1\r\n\r\n",
                    b"\x00" * 64):
        s = socket.create_connection(("127.0.0.1", adapter.port), timeout=5)
        s.sendall(garbage)
        try:
            s.recv(4096)     # an error response or a close; never a hang
        except socket.timeout:
            pytest.fail("server hung on garbage %r" % garbage)
        s.close()
    resp, data = _get(adapter, "GET", "/health")
    assert resp.status == 200


def _twistd(*args, timeout=20):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=servers.REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "etcd-adapter"] + list(args),
        env=env, cwd=servers.REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_cannot_listen_exits_non_zero():
    # A daemon that cannot bind must exit (so Restart=on-failure fires), not idle.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        result = _twistd("--listen", "tcp:%d:interface=127.0.0.1" % port)
    finally:
        blocker.close()
    assert result.returncode == 1
    # One line, etcd's wording, no traceback.
    assert ("etcd-adapter failed to start: listen tcp 127.0.0.1:%d: bind: address "
            "already in use\n" % port) in result.stdout
    assert "Traceback" not in result.stdout


def test_unix_socket_listener(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    path = str(tmp_path / "etcd.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "etcd-adapter", "--listen", "unix:" + path],
        env=dict(os.environ, PYTHONPATH=servers.REPO_ROOT), cwd=servers.REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        with grpc.insecure_channel("unix:" + path) as channel:
            status = channel.unary_unary(
                "/etcdserverpb.Maintenance/Status",
                request_serializer=rpc.StatusRequest.SerializeToString,
                response_deserializer=rpc.StatusResponse.FromString)
            resp = status(rpc.StatusRequest(), timeout=5)
        assert resp.leader == resp.header.member_id != 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0].decode()
    # twistd re-raises the signal it stopped on, so a clean SIGTERM stop reads as -15.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "etcd-adapter stopped" in out


def test_fifty_mib_range_streams_out_uncapped(adapter):
    # etcd's own gateway once capped responses at 4 MiB; our gRPC face caps nothing
    # (GrpcClient lifts grpcio's own 4 MiB receive limit).
    with servers.GrpcClient(adapter.endpoint, timeout=60) as client:
        value = b"x" * (1 << 20)
        for i in range(50):
            assert client.call("/etcdserverpb.KV/Put",
                               rpc.PutRequest(key=b"big/%02d" % i, value=value),
                               rpc.PutResponse).ok
        got = client.call("/etcdserverpb.KV/Range",
                          rpc.RangeRequest(key=b"big/", range_end=b"big0"), rpc.RangeResponse)
        assert got.ok, got
        resp = got.response
        assert resp.count == 50
        assert [kv.key for kv in resp.kvs] == [b"big/%02d" % i for i in range(50)]
        assert all(kv.value == value for kv in resp.kvs)
        deleted = client.call("/etcdserverpb.KV/DeleteRange",
                              rpc.DeleteRangeRequest(key=b"big/", range_end=b"big0"),
                              rpc.DeleteRangeResponse)
        assert deleted.response.deleted == 50


def test_listen_backlog_is_large(adapter):
    # Twisted's default backlog (50) made 2,000 simultaneous reconnects stall for seconds
    # on dropped SYNs; the daemon asks for 4096 (capped by net.core.somaxconn).
    import subprocess
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % adapter.port],
                         capture_output=True, text=True, check=True).stdout.split()
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert out[0] == "LISTEN"
    assert int(out[2]) == min(4096, somaxconn)


def test_backlog_option_is_kept():
    from etcdadapter.server import with_backlog
    assert with_backlog("tcp:2379:interface=127.0.0.1") == \
        "tcp:2379:interface=127.0.0.1:backlog=4096"
    assert with_backlog("tcp:2379:backlog=10") == "tcp:2379:backlog=10"
    assert with_backlog("unix:/run/etcd.sock") == "unix:/run/etcd.sock:backlog=4096"

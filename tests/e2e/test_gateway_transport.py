"""The JSON face's transport behaviour on the real daemon: JSON over HTTP/2 on the gRPC
port, streaming watches released when the client goes away, /metrics, CORS, body limits.
(What the JSON says is compared with etcd's gateway in test_gateway_*.py.)"""

import base64
import json
import re
import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest

from support import servers
from support.servers import metric
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter

_request = servers.http_request


def b64(data):
    return base64.b64encode(data).decode()


def post(adapter, path, obj, conn=None):
    resp, data = _request(adapter, "POST", path, json.dumps(obj).encode(), conn=conn)
    return resp.status, json.loads(data)


class H2Client(object):
    """A blocking HTTP/2 (h2c, prior knowledge) client for JSON requests."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.streams = {}
        self._flush()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, body, end=True, content_type="application/json"):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":path", path),
                                     (":scheme", "http"), (":authority", "localhost"),
                                     ("content-type", content_type)])
        self.conn.send_data(sid, body, end_stream=end)
        self.streams[sid] = {"headers": None, "data": b"", "ended": False}
        self._flush()
        return sid

    def reset(self, sid):
        self.conn.reset_stream(sid)
        self._flush()

    def pump(self, until, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("h2 client: timed out")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("h2 client: connection closed")
            for ev in self.conn.receive_data(chunk):
                st = self.streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived):
                    st["headers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    st["data"] += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                        ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    st["ended"] = True
            self._flush()

    def close(self):
        self.sock.close()


def test_json_over_http2_next_to_grpc(adapter):
    c = H2Client(adapter.port)
    try:
        sid = c.request("/v3/kv/put", json.dumps({"key": b64(b"h2/a"),
                                                  "value": b64(b"1")}).encode())
        c.pump(lambda: c.streams[sid]["ended"])
        st = c.streams[sid]
        assert st["headers"][":status"] == "200"
        assert st["headers"]["content-type"] == "application/json"
        put_rev = int(json.loads(st["data"])["header"]["revision"])
        # A JSON error over h2: same status and body as over HTTP/1.1.
        sid = c.request("/v3/kv/range", b'{"key":"YQ"}')
        c.pump(lambda: c.streams[sid]["ended"])
        assert c.streams[sid]["headers"][":status"] == "400"
        assert json.loads(c.streams[sid]["data"]) == {
            "error": "illegal base64 data at input byte 0", "code": 3,
            "message": "illegal base64 data at input byte 0"}
        # Streaming watch over h2: created, then the event of a put made over HTTP/1.1.
        sid = c.request("/v3/watch", json.dumps({"create_request": {
            "key": b64(b"h2/"), "range_end": b64(b"h20"), "start_revision": put_rev}}
        ).encode())
        c.pump(lambda: c.streams[sid]["data"].count(b"\n") >= 2)
        lines = [json.loads(x)["result"] for x in c.streams[sid]["data"].splitlines()]
        assert lines[0]["created"] is True
        assert lines[1]["events"][0]["kv"]["mod_revision"] == str(put_rev)
        status, body = post(adapter, "/v3/kv/put", {"key": b64(b"h2/b"), "value": b64(b"2")})
        assert status == 200
        c.pump(lambda: c.streams[sid]["data"].count(b"\n") >= 3)
        event = json.loads(c.streams[sid]["data"].splitlines()[2])["result"]
        assert event["header"]["revision"] == body["header"]["revision"]
        assert event["events"][0]["kv"]["key"] == b64(b"h2/b")
        assert metric(adapter, "etcd_debugging_mvcc_watcher_total") == 1
        # Resetting the stream releases its watcher.
        c.reset(sid)
        servers.wait_until(lambda: metric(adapter, "etcd_debugging_mvcc_watcher_total") == 0,
                 what="the h2 watcher to be released")
    finally:
        c.close()


def _raw_watch(adapter, create):
    body = json.dumps({"create_request": create}).encode()
    s = socket.create_connection(("127.0.0.1", adapter.port), timeout=10)
    s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    buf = b""
    while b'"created":true' not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    return s, buf


def test_http1_watch_is_chunked_and_released_when_the_client_goes_away(adapter):
    before = metric(adapter, "etcd_debugging_mvcc_watcher_total")
    socks = []
    for i in range(20):
        s, head = _raw_watch(adapter, {"key": b64(b"gone/%d" % i)})
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        assert b"\r\nContent-Type: application/json\r\n" in head
        assert b"Server:" not in head
        socks.append(s)
    assert metric(adapter, "etcd_debugging_mvcc_watcher_total") == before + 20
    assert metric(adapter, "etcd_adapter_open_streams", grpc_method="Watch") >= 20
    for s in socks:
        s.close()
    servers.wait_until(lambda: metric(adapter, "etcd_debugging_mvcc_watcher_total") == before,
             what="closed HTTP watches to release their watchers")
    # The server is unaffected.
    status, _ = post(adapter, "/v3/kv/range", {"key": b64(b"gone/0")})
    assert status == 200


def test_metrics_count_both_faces(adapter):
    labels = dict(grpc_method="Put", grpc_service="etcdserverpb.KV", grpc_type="unary")
    ok0 = metric(adapter, "grpc_server_handled_total", grpc_code="OK", **labels)
    bad0 = metric(adapter, "grpc_server_handled_total", grpc_code="InvalidArgument", **labels)
    assert post(adapter, "/v3/kv/put", {"key": b64(b"m")})[0] == 200
    assert post(adapter, "/v3/kv/put", {"key": ""})[0] == 400
    with servers.GrpcClient(adapter.endpoint) as client:
        assert client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"m"),
                           rpc.PutResponse).ok
        rev = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"m"),
                          rpc.RangeResponse).response.header.revision
    assert metric(adapter, "grpc_server_handled_total", grpc_code="OK", **labels) == ok0 + 2
    assert metric(adapter, "grpc_server_handled_total", grpc_code="InvalidArgument",
                  **labels) == bad0 + 1
    assert metric(adapter, "grpc_server_handling_seconds_count", **labels) >= ok0 + 3
    assert metric(adapter, "etcd_debugging_mvcc_current_revision") == rev
    assert metric(adapter, "etcd_mvcc_db_total_size_in_bytes") > 0
    assert metric(adapter, "etcd_server_has_leader") == 1


def test_cors_like_etcd(adapter):
    resp, data = _request(adapter, "OPTIONS", "/v3/kv/put")
    assert (resp.status, data) == (200, b"")
    for resp, _ in (_request(adapter, "OPTIONS", "/anything"),
                    _request(adapter, "GET", "/version"),
                    _request(adapter, "POST", "/v3/kv/range", b"{}")):
        assert resp.getheader("Access-Control-Allow-Origin") == "*"
        assert resp.getheader("Access-Control-Allow-Methods") == \
            "POST, GET, OPTIONS, PUT, DELETE"
        assert resp.getheader("Access-Control-Allow-Headers") == \
            "accept, content-type, authorization"


def test_request_size_limits(adapter):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", adapter.port, timeout=30)
    # Above --max-request-bytes (1.5 MiB): etcd's own check, 400.
    status, body = post(adapter, "/v3/kv/put", {"key": b64(b"big"),
                                                "value": b64(b"x" * (1600 * 1024))}, conn)
    assert (status, body["message"]) == (400, "etcdserver: request is too large")
    # Above gRPC's receive limit (max-request-bytes + 512 KiB): ResourceExhausted, 429.
    status, body = post(adapter, "/v3/kv/put", {"key": b64(b"big"),
                                                "value": b64(b"x" * (2200 * 1024))}, conn)
    assert status == 429
    assert re.match(r"grpc: received message larger than max \(\d+ vs\. 2097152\)$",
                    body["message"]), body
    assert body["code"] == 8
    # A body far above anything valid is read and dropped: 413, the connection goes on.
    resp, data = _request(adapter, "POST", "/v3/kv/put", b" " * (6 << 20), conn=conn)
    assert resp.status == 413
    assert json.loads(data)["message"] == "http: request body too large"
    resp, data = _request(adapter, "POST", "/v3/kv/range",
                          json.dumps({"key": b64(b"big")}).encode(), conn=conn)
    assert resp.status == 200 and "kvs" not in json.loads(data)
    conn.close()

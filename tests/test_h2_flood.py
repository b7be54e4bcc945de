"""HTTP/2 abuse on the real daemon: a PING flood from a client that never reads, and a
rapid-reset burst.  Other clients are still answered within normal latency and the
server's memory does not balloon.  (Pure-Python frame parsing caps a flood at roughly
2-3 MB/s per connection here, so memory growth is CPU-bound rather than unbounded.)"""

import socket
import struct
import time

import pytest

import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id) + payload


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_for(sock, data, seconds):
    """Push as much of ``data`` as the server takes within ``seconds``; never read."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    return sent


def _range_latency(server):
    with servers.GrpcClient(server.endpoint) as client:
        t0 = time.monotonic()
        r = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"k"),
                        rpc.RangeResponse)
        assert r.ok, r
        return time.monotonic() - t0


def test_ping_flood_from_a_client_that_never_reads(adapter):
    base = _rss_kib(adapter.proc.pid)
    flood = socket.create_connection(("127.0.0.1", adapter.port))
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = _frame(6, 0, 0, b"12345678")
    blob = PREFACE + _frame(4, 0, 0) + ping * (6 << 20)      # 6 Mi PINGs, ~100 MB
    try:
        sent = _send_for(flood, blob, 5.0)
        assert sent > 1 << 20       # the flood did reach the server
        assert _range_latency(adapter) < 2.0
        grown = _rss_kib(adapter.proc.pid) - base
        assert grown < 48 * 1024, "RSS grew by %d KiB" % grown
    finally:
        flood.close()
    assert _range_latency(adapter) < 2.0


def test_rapid_reset_burst(adapter):
    from h2.connection import H2Connection
    from h2.config import H2Configuration
    conn = H2Connection(H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", adapter.port))
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
               (":path", "/etcdserverpb.KV/Range"), ("content-type", "application/grpc")]
    try:
        for i in range(5000):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            conn.reset_stream(sid)
            if i % 500 == 0:
                sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
        assert _range_latency(adapter) < 2.0
    finally:
        sock.close()
    assert _range_latency(adapter) < 2.0

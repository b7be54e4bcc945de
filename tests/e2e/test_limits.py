"""Connection limits and hostile clients, on the real daemon with real sockets: header
and body timeouts (slow-loris, TLS handshake included), the idle timeout (etcdctl and
grpcio carry on after it; watches are never idle), --max-connections, HTTP/2 frame and
header-block bounds (CONTINUATION flood), and the output budget (a client that asks for
large values and never reads).  Short timeouts are set through the options."""

import base64
import http.client
import json
import signal
import socket
import ssl
import struct
import subprocess
import time

import grpc
import h2.config
import h2.connection
import h2.settings
import pytest

from support import servers
from support.certs import CA, read
from support.h2_frames import PREFACE, frame, read_frames, send_for
from support.servers import metric, rss_kib
from support.watch import WatchSession
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.transport.grpc_codec import frame_message

pytestmark = pytest.mark.adapter

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
GOAWAY, SETTINGS = 7, 4
ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, PROTOCOL_ERROR, NO_ERROR = 0xb, 0x6, 0x1, 0x0


def _serve(label, *args, credentials=None):
    server = servers.AdapterServer(label, extra_args=list(args))
    server.credentials = credentials
    server.start()
    return server


@pytest.fixture(scope="module")
def timeouts(request):
    server = _serve("limits-timeouts", "--header-timeout", str(HEADER_TIMEOUT),
                    "--idle-timeout", str(IDLE_TIMEOUT))
    request.module._etcdadapter_servers = [server]
    yield server
    server.stop()
    server.cleanup()


def _closed_after(sock, limit=10.0):
    """Seconds until the server closes ``sock`` (EOF or reset); read data is dropped."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def _version(server):
    resp, data = servers.http_request(server, "GET", "/version")
    assert resp.status == 200 and b"etcdserver" in data
    return json.loads(data)


def _timed_out(server, phase):
    return metric(server, "etcd_adapter_connections_timed_out_total", phase=phase)


# ---------------------------------------------------------------------------------------
# header and body timeouts

def test_slow_loris_is_closed_after_the_header_timeout(timeouts):
    before = _timed_out(timeouts, "header")
    head = b"GET /version HTTP/1.1\r\nHost: x\r\nUser-Agent: %s\r\n\r\n" % (b"x" * 200)
    s = socket.create_connection(("127.0.0.1", timeouts.port))
    t0 = time.monotonic()
    sent = 0
    try:
        # One byte every 0.1 s: trickling bytes does not extend the deadline.
        while sent < len(head):
            s.sendall(head[sent:sent + 1])
            sent += 1
            if sent % 3 == 0:
                _version(timeouts)       # a normal client is served meanwhile
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = _closed_after(s) + (time.monotonic() - t0)
    s.close()
    assert sent < len(head)
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0, elapsed
    assert _timed_out(timeouts, "header") == before + 1


@pytest.mark.parametrize("opening", [b"", PREFACE, PREFACE[:10]],
                         ids=["silent", "h2-preface-without-settings", "half-preface"])
def test_connections_without_a_request_head_are_closed(timeouts, opening):
    s = socket.create_connection(("127.0.0.1", timeouts.port))
    s.sendall(opening)
    elapsed = _closed_after(s)
    s.close()
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0, elapsed


def _range_head(length):
    return (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % length)


def test_a_slow_body_is_served_a_stalled_one_is_closed(timeouts):
    body = json.dumps({"key": base64.b64encode(b"nothing").decode()}).encode()
    body = body + b" " * (10 - len(body) % 10)
    # Slow: a piece every 0.4 s, 2 s in all (twice the timeout): answered.
    s = socket.create_connection(("127.0.0.1", timeouts.port))
    s.sendall(_range_head(len(body)))
    for i in range(0, len(body), len(body) // 5):
        time.sleep(0.4)
        s.sendall(body[i:i + len(body) // 5])
    s.settimeout(5)
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply
    s.close()
    # Stalled: half the body, then nothing.
    before = _timed_out(timeouts, "body")
    s = socket.create_connection(("127.0.0.1", timeouts.port))
    s.sendall(_range_head(len(body)) + body[:len(body) // 2])
    elapsed = _closed_after(s)
    s.close()
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 1.0, elapsed
    assert _timed_out(timeouts, "body") == before + 1


def test_the_tls_handshake_counts_in_the_header_timeout(tmp_path):
    ca = CA(tmp_path)
    cert, key = ca.issue("server", "etcd-adapter", "server", ips=["127.0.0.1"])[:2]
    server = _serve("limits-tls", "--cert-file", cert, "--key-file", key,
                    "--header-timeout", str(HEADER_TIMEOUT),
                    credentials=grpc.ssl_channel_credentials(read(ca.path)))
    try:
        # No ClientHello at all.
        s = socket.create_connection(("127.0.0.1", server.port))
        assert _closed_after(s) < HEADER_TIMEOUT + 1.0
        s.close()
        # A handshake that takes most of the time, then a request head that would have
        # been in time had the clock started after the handshake.
        ctx = ssl.create_default_context(cafile=ca.path)
        raw = socket.create_connection(("127.0.0.1", server.port))
        time.sleep(HEADER_TIMEOUT * 0.7)
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /version HTTP/1.1\r\n")
        time.sleep(HEADER_TIMEOUT * 0.6)
        with pytest.raises((ssl.SSLError, OSError)):
            tls.sendall(b"Host: x\r\n\r\n")
            tls.settimeout(5)
            if not tls.recv(65536):
                raise ConnectionResetError("closed")
        tls.close()
        # A prompt client is served.
        raw = socket.create_connection(("127.0.0.1", server.port))
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.settimeout(5)
        assert tls.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        tls.close()
    finally:
        server.stop()
        server.cleanup()


# ---------------------------------------------------------------------------------------
# idle timeout

def _etcdctl_txn_interactive(server):
    return servers.spawn_etcdctl(server, ["txn", "-i"], stdin=subprocess.PIPE)


def test_idle_connections_are_closed_and_clients_carry_on(timeouts):
    """One idle period for every client at once: a keep-alive HTTP/1.1 connection is
    closed; grpcio's and etcdctl's connections get GOAWAY and their next call works;
    watches (gRPC and HTTP/1.1) stay open and get their events."""
    before = _timed_out(timeouts, "idle")
    keepalive = http.client.HTTPConnection("127.0.0.1", timeouts.port, timeout=10)
    resp, _ = servers.http_request(timeouts, "GET", "/version", conn=keepalive)
    assert resp.status == 200
    client = servers.GrpcClient(timeouts.endpoint)
    assert servers.store_revision(client) > 0
    # etcdctl connects before it reads the transaction from stdin.
    txn = _etcdctl_txn_interactive(timeouts)
    channel = grpc.insecure_channel(timeouts.endpoint)
    watch = WatchSession(channel)
    watch.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"idle/w")))
    assert watch.collect(1, timeout=10)[0].created
    body = json.dumps({"create_request": {"key": base64.b64encode(b"idle/w").decode()}})
    http_watch = socket.create_connection(("127.0.0.1", timeouts.port), timeout=10)
    http_watch.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body.encode()))
    got = b""
    while b'"created":true' not in got:
        got += http_watch.recv(65536)

    time.sleep(IDLE_TIMEOUT + 1.5)

    # Closed by the server: the HTTP/1.1 keep-alive connection...
    keepalive.sock.settimeout(1)
    assert keepalive.sock.recv(10) == b""
    keepalive.close()
    # ... and the idle HTTP/2 connections (grpcio's, etcdctl's, the probe's), counted.
    assert _timed_out(timeouts, "idle") >= before + 3
    # Their clients carry on.
    r = client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"idle/w", value=b"1"),
                    rpc.PutResponse)
    assert r.ok, r
    out, err = txn.communicate(b"\nput idle/txn 2\n\n\n", timeout=20)
    assert txn.returncode == 0, err
    assert out.decode().endswith("SUCCESS\n\nOK\n"), out
    r = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"idle/txn"),
                    rpc.RangeResponse)
    assert r.ok and r.response.kvs[0].value == b"2", r
    client.close()
    # The watches were never idle: both get the put.
    events = [e for resp in watch.collect(1, timeout=10) for e in resp.events]
    assert [(e.kv.key, e.kv.value) for e in events] == [(b"idle/w", b"1")]
    watch.close()
    channel.close()
    http_watch.settimeout(10)
    got = b""
    while b'"events"' not in got:
        chunk = http_watch.recv(65536)
        assert chunk, "the HTTP/1.1 watch was closed"
        got += chunk
    assert base64.b64encode(b"1") in got
    http_watch.close()


# ---------------------------------------------------------------------------------------
# max connections

def test_max_connections(request):
    server = _serve("limits-max-conn", "--max-connections", "3")
    request.node._etcdadapter_servers = [server]
    conns = []
    try:
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            resp, _ = servers.http_request(server, "GET", "/version", conn=c)
            assert resp.status == 200
            conns.append(c)
        # The fourth is closed at once; the three keep working.
        for _ in range(2):
            extra = socket.create_connection(("127.0.0.1", server.port))
            try:
                extra.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass            # the server's reset came first
            assert _closed_after(extra, limit=5) < 1.0
            extra.close()
        for c in conns:
            resp, _ = servers.http_request(server, "GET", "/version", conn=c)
            assert resp.status == 200

        def sample(name):
            resp, data = servers.http_request(server, "GET", "/metrics", conn=conns[0])
            for line in data.decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        assert sample("etcd_adapter_connections_refused_total") == 2
        assert sample("etcd_adapter_connections") == 3
        assert sample("etcd_adapter_connections_limit") == 3
        assert "refused 1 connection(s)" in server.log_text()
        # A slot freed is a slot usable.
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert _version(server)
                break
            except (ConnectionError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for c in conns:
            c.close()
        server.stop()
        server.cleanup()


# ---------------------------------------------------------------------------------------
# HTTP/2 frame bounds


def _goaway_code(frames):
    goaways = [f for f in frames if f[0] == GOAWAY]
    assert goaways, "no GOAWAY in %r" % ([f[0] for f in frames],)
    return struct.unpack(">I", goaways[0][3][4:8])[0]


_HEADERS_START = (  # a valid HPACK start: :method POST, :scheme http, :path /
    b"\x83\x86\x84")


def test_continuation_flood_is_cut_off(adapter):
    s = socket.create_connection(("127.0.0.1", adapter.port))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    s.sendall(frame(1, 0, 1, _HEADERS_START))        # HEADERS without END_HEADERS
    piece = frame(9, 0, 1, b"\x00" * 16384)           # CONTINUATION, never the last
    sent = 0
    s.setblocking(False)
    got = b""
    deadline = time.monotonic() + 20
    try:
        while b"\x07\x00\x00\x00\x00\x00" not in got and time.monotonic() < deadline:
            try:
                sent += s.send(piece)
            except BlockingIOError:
                time.sleep(0.01)
            try:
                got += s.recv(65536)
            except BlockingIOError:
                pass
            assert sent < (16 << 20), "no GOAWAY after %d bytes of CONTINUATION" % sent
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.setblocking(True)
    frames = read_frames(_Replay(got, s), GOAWAY)
    s.close()
    # Cut at about the advertised header list size (1 MiB) plus a frame; the kernel
    # buffers between us hold the rest of what we managed to send.
    assert _goaway_code(frames) == ENHANCE_YOUR_CALM
    assert sent < 12 << 20, sent
    _version(adapter)


def test_many_small_continuations_and_oversized_frames_are_refused(adapter):
    # 65 tiny CONTINUATION frames: h2's own limit (64).
    s = socket.create_connection(("127.0.0.1", adapter.port))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(1, 0, 1, _HEADERS_START) +
              frame(9, 0, 1, b"\x00") * 70)
    assert _goaway_code(read_frames(s, GOAWAY)) == PROTOCOL_ERROR
    s.close()
    # A DATA frame announcing 8 MiB (we advertise 16 KiB frames): refused at its header,
    # before any of its body.
    s = socket.create_connection(("127.0.0.1", adapter.port))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0) + struct.pack(">I", 8 << 20)[1:] +
              b"\x00\x00" + struct.pack(">I", 1))
    assert _goaway_code(read_frames(s, GOAWAY)) == FRAME_SIZE_ERROR
    s.close()
    _version(adapter)


class _Replay(object):
    """A socket whose first recv returns bytes already read."""

    def __init__(self, data, sock):
        self.data, self.sock = data, sock

    def settimeout(self, t):
        self.sock.settimeout(t)

    def recv(self, n):
        if self.data:
            data, self.data = self.data, b""
            return data
        return self.sock.recv(n)


# ---------------------------------------------------------------------------------------
# output budget: a client that asks for much and reads nothing

BIG = 1 << 20
ASKS = 200


def _put_big(server, key=b"big"):
    with servers.GrpcClient(server.endpoint) as c:
        r = c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=key, value=b"v" * BIG),
                   rpc.PutResponse)
        assert r.ok, r


def _h2_range_flood(server, open_windows):
    """Bytes of a connection asking ASKS times for the big value."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if open_windows:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1})
        conn.increment_flow_control_window(2 ** 31 - 1 - 65535)
    body = frame_message(rpc.RangeRequest(key=b"big").SerializeToString())
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
               (":path", "/etcdserverpb.KV/Range"), ("content-type", "application/grpc"),
               ("te", "trailers")]
    for _ in range(ASKS):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers)
        conn.send_data(sid, body, end_stream=True)
    return conn.data_to_send()


def _http1_range_flood(server):
    body = json.dumps({"key": base64.b64encode(b"big").decode()}).encode()
    return (_range_head(len(body)) + body) * ASKS


def _handled_ranges(server):
    return metric(server, "grpc_server_handled_total", grpc_method="Range", grpc_code="OK")


@pytest.mark.parametrize("flood", ["h2-open-windows", "h2-default-windows",
                                   "http1-pipelined"])
def test_a_client_that_never_reads_is_bounded(request, flood):
    server = _serve("limits-budget")
    request.node._etcdadapter_servers = [server]
    try:
        _put_big(server)
        time.sleep(0.5)
        base = rss_kib(server.proc.pid)
        handled = _handled_ranges(server)
        paused = metric(server, "etcd_adapter_output_paused_total")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        try:
            if flood.startswith("h2"):
                blob = _h2_range_flood(server, flood == "h2-open-windows")
            else:
                blob = _http1_range_flood(server)
            send_for(s, blob, 3.0)
            time.sleep(1.0)
            # Others are answered promptly, the flood's requests wait.
            t0 = time.monotonic()
            _version(server)
            with servers.GrpcClient(server.endpoint) as c:
                r = c.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"big"),
                           rpc.RangeResponse)
                assert r.ok and len(r.response.kvs[0].value) == BIG
            assert time.monotonic() - t0 < 2.0
            answered = _handled_ranges(server) - handled - 1
            grown = rss_kib(server.proc.pid) - base
            assert metric(server, "etcd_adapter_output_paused_total") >= paused + 1
            # Without the budget all ASKS are answered and RSS grows by 200-270 MiB;
            # with it, 3-5 answers and 6-9 MiB (the 4 MiB budget, a response more, and
            # what the kernel took).
            assert answered < 20, answered
            assert grown < 48 * 1024, "RSS grew by %d KiB" % grown
        finally:
            s.close()
        _version(server)
    finally:
        server.stop()
        server.cleanup()


def test_a_reading_client_gets_every_large_answer(adapter):
    """Held requests are released as the output drains: no stall for clients that read,
    over HTTP/2 (many concurrent calls) and HTTP/1.1 (pipelined)."""
    _put_big(adapter, b"big")
    with grpc.insecure_channel(adapter.endpoint, options=[
            ("grpc.max_receive_message_length", -1)]) as ch:
        call = ch.unary_unary("/etcdserverpb.KV/Range",
                              request_serializer=rpc.RangeRequest.SerializeToString,
                              response_deserializer=rpc.RangeResponse.FromString)
        futures = [call.future(rpc.RangeRequest(key=b"big"), timeout=60)
                   for _ in range(40)]
        assert all(len(f.result().kvs[0].value) == BIG for f in futures)
    s = socket.create_connection(("127.0.0.1", adapter.port), timeout=30)
    n = 20
    body = json.dumps({"key": base64.b64encode(b"big").decode()}).encode()
    s.sendall((_range_head(len(body)) + body) * n)
    f = s.makefile("rb")
    for _ in range(n):
        assert f.readline().startswith(b"HTTP/1.1 200 OK")
        length = None
        while True:
            line = f.readline()
            if line == b"\r\n":
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        doc = json.loads(f.read(length))
        assert base64.b64decode(doc["kvs"][0]["value"]) == b"v" * BIG
    f.close()
    s.close()


def test_a_slow_reader_is_closed_once_it_has_read_everything(request):
    """Shutdown while a client's answers are still in the socket buffer (reading
    stopped for it): the connection closes when it has read them, and the server exits
    at once, not after --drain-timeout."""
    server = _serve("limits-slow-reader")
    request.node._etcdadapter_servers = [server]
    try:
        _put_big(server)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1})
        conn.increment_flow_control_window(2 ** 31 - 1 - 65535)
        body = frame_message(rpc.RangeRequest(key=b"big").SerializeToString())
        for _ in range(3):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                    (":authority", "x"), (":path", "/etcdserverpb.KV/Range"),
                                    ("content-type", "application/grpc")])
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        time.sleep(1.0)                     # answered; megabytes wait in the buffers
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        t0 = time.monotonic()
        received = 0
        s.settimeout(10)
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        assert received > 3 * BIG
        server.proc.wait(5)
        assert time.monotonic() - t0 < 3.0
        s.close()
    finally:
        server._kill()
        server.cleanup()

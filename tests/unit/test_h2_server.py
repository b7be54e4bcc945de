"""The HTTP/2 + gRPC layer without sockets: an h2 client state machine talks to H2Server
through byte buffers, with a fake clock for timeouts."""

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.rpc import UNARY, Method, MethodRegistry
from etcdadapter.transport.grpc_codec import (
    MessageDecoder, decode_grpc_message, encode_grpc_message, frame_message, parse_timeout)
from etcdadapter.transport import h2_server
from etcdadapter.transport.h2_server import H2Settings

from support.deep_txn import PUT_ONLY, nested_txn
from support.h2_harness import Harness, echo_registry


def test_unary_round_trip():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"abc"))
    headers, payloads, trailers = h.result(sid)
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/grpc"
    assert len(payloads) == 1
    resp = rpc.RangeResponse.FromString(payloads[0])
    assert resp.count == 3 and resp.kvs[0].key == b"abc"
    assert trailers["grpc-status"] == "0"


def test_message_split_byte_by_byte_and_frames_joined():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.start_call("/etcdserverpb.KV/Range")
    h.pump()
    framed = frame_message(rpc.RangeRequest(key=b"x" * 300).SerializeToString())
    for i in range(len(framed)):
        h.send(sid, framed[i:i + 1], end=(i == len(framed) - 1))
    _, payloads, trailers = h.result(sid)
    assert trailers["grpc-status"] == "0"
    assert rpc.RangeResponse.FromString(payloads[0]).count == 300


def test_unknown_method_is_unimplemented_trailers_only():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Nope", rpc.RangeRequest(key=b"a"))
    headers, payloads, trailers = h.result(sid)
    assert payloads == []
    assert trailers["grpc-status"] == str(StatusCode.UNIMPLEMENTED)
    assert trailers["grpc-message"] == "unknown method Nope for service etcdserverpb.KV"


def test_error_message_is_percent_encoded():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"boom"))
    _, payloads, trailers = h.result(sid)
    assert payloads == []
    assert trailers["grpc-status"] == "11"
    assert trailers["grpc-message"] == "bad: 100%25 %C3%A9%0A"
    assert decode_grpc_message(trailers["grpc-message"]) == "bad: 100% \u00e9\n"


def test_malformed_protobuf_and_truncated_frame():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.start_call("/etcdserverpb.KV/Range")
    h.send(sid, frame_message(b"\xff\xff\xff"), end=True)
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.INTERNAL)
    assert trailers["grpc-message"].startswith("grpc: error unmarshalling request")
    sid = h.start_call("/etcdserverpb.KV/Range")
    h.send(sid, struct.pack(">BI", 0, 100) + b"abc", end=True)
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.UNKNOWN)     # as grpc-go reports it
    assert trailers["grpc-message"] == "unexpected EOF"
    # the connection still serves calls
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"ok"))
    assert h.result(sid)[2]["grpc-status"] == "0"


def test_oversized_message_rejected_before_buffering():
    reg, _ = echo_registry()
    h = Harness(reg, settings=H2Settings(max_receive_message_size=1000))
    sid = h.start_call("/etcdserverpb.KV/Range")
    h.send(sid, struct.pack(">BI", 0, 5000) + b"x" * 100)
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.RESOURCE_EXHAUSTED)
    assert trailers["grpc-message"] == "grpc: received message larger than max (5000 vs. 1000)"


def test_large_response_streams_through_flow_control():
    reg, _ = echo_registry()
    h = Harness(reg)
    size = 5 * 1024 * 1024
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"big", limit=size))
    h.pump()
    _, payloads, trailers = h.result(sid)
    assert trailers["grpc-status"] == "0"
    assert len(rpc.RangeResponse.FromString(payloads[0]).kvs[0].value) == size


@pytest.mark.parametrize("size", [0, 100, 16360, 16384, 16400, 65000])
def test_a_unary_answer_in_one_go_is_what_h2_would_send(size):
    # A unary answer that fits a frame and the windows is framed at once
    # (ServerConnection.send_response); one that does not goes the general way.  Both
    # must give the client the same frames and leave the same stream and window state
    # (the client returns no window: what was sent shows in the server's window).
    seen = []
    for one_go in (True, False):
        reg, _ = echo_registry()
        h = Harness(reg)
        h.ack = False
        if not one_go:
            h.server.conn.send_response = lambda *args: False
        sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"big", limit=size))
        h.pump()
        headers, payloads, trailers = h.result(sid)
        assert trailers["grpc-status"] == "0"
        assert len(rpc.RangeResponse.FromString(payloads[0]).kvs[0].value) == size
        conn = h.server.conn
        assert sid not in conn.streams and conn.open_inbound_streams == 0
        seen.append(([(type(e).__name__, getattr(e, "stream_ended", None))
                      for e in h.events if getattr(e, "stream_id", None) == sid],
                     headers, trailers, conn.outbound_flow_control_window,
                     conn._closed_streams.get(sid),        # how h2 says it was closed
                     h.client.streams[sid].state_machine.state))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("calls", [1, h2_server.ANSWERS_PER_WRITE,
                                   3 * h2_server.ANSWERS_PER_WRITE + 1])
def test_the_answers_of_one_read_go_out_a_few_at_a_time(calls):
    # Answers leave while the read's later calls are handled (the client can work on
    # them meanwhile), a few per write: a write each cost more server CPU than the call.
    reg, handlers = echo_registry()
    h = Harness(reg)
    writes = []
    h.server._write = lambda data: (writes.append(data), h.to_client.extend(data))
    sids = [h.start_call("/etcdserverpb.KV/Range") for _ in range(calls)]
    for i, sid in enumerate(sids):
        h.client.send_data(sid, frame_message(
            rpc.RangeRequest(key=b"k%d" % i).SerializeToString()), end_stream=True)
    h.server.data_received(h.client.data_to_send())     # all the calls in one read
    assert len(writes) == -(-calls // h2_server.ANSWERS_PER_WRITE)
    h.pump()
    for i, sid in enumerate(sids):
        _, payloads, trailers = h.result(sid)
        assert trailers["grpc-status"] == "0"
        assert rpc.RangeResponse.FromString(payloads[0]).kvs[0].key == b"k%d" % i
    # An answer made outside a read (a store's answer arriving later) goes out at once.
    del writes[:]
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"later"))
    del writes[:]
    d, _ = handlers["pending"].pop()
    d.callback(rpc.RangeResponse(count=7))
    assert len(writes) == 1
    h.pump()
    assert rpc.RangeResponse.FromString(h.result(sid)[1][0]).count == 7


def test_grpc_timeout_gives_deadline_exceeded_and_cancels_handler():
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"later"),
                  extra_headers=[("grpc-timeout", "200m")])
    assert h.result(sid)[2] is None
    h.clock.advance(0.25)
    h.pump()
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED)
    d, _ = handlers["pending"][0]
    assert d.called   # cancelled


def test_unknown_encoding_unimplemented():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"a"),
                  extra_headers=[("grpc-encoding", "snappy")])
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.UNIMPLEMENTED)


def test_gzip_compressed_request():
    import gzip
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.start_call("/etcdserverpb.KV/Range", extra_headers=[("grpc-encoding", "gzip")])
    body = gzip.compress(rpc.RangeRequest(key=b"zipped").SerializeToString())
    h.send(sid, struct.pack(">BI", 1, len(body)) + body, end=True)
    _, payloads, trailers = h.result(sid)
    assert trailers["grpc-status"] == "0"
    assert rpc.RangeResponse.FromString(payloads[0]).kvs[0].key == b"zipped"


def test_bidi_stream_survives_half_close_and_cancel_on_reset():
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.start_call("/etcdserverpb.Watch/Watch")
    req = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"a", watch_id=7))
    h.send(sid, frame_message(req.SerializeToString()) * 2, end=True)
    _, payloads, trailers = h.result(sid)
    assert [rpc.WatchResponse.FromString(p).watch_id for p in payloads] == [7, 7]
    assert trailers is None                       # still open after the client half-closed
    stream = handlers["streams"][0]
    assert handlers["half_closed"] == [stream]
    stream.send(rpc.WatchResponse(watch_id=8))    # server keeps sending
    h.pump()
    assert len(h.result(sid)[1]) == 3
    stream.finish()
    h.pump()
    assert h.result(sid)[2]["grpc-status"] == "0"

    sid2 = h.start_call("/etcdserverpb.Watch/Watch")
    h.pump()
    h.client.reset_stream(sid2)
    h.pump()
    assert handlers["cancelled"] == [handlers["streams"][1]]


def test_ping_answered_and_settings_advertised():
    reg, _ = echo_registry()
    h = Harness(reg, settings=H2Settings(max_concurrent_streams=12345))
    assert h.client.remote_settings.max_concurrent_streams == 12345
    h.client.ping(b"12345678")
    h.pump()
    acks = [e for e in h.events if isinstance(e, h2.events.PingAckReceived)]
    assert acks and acks[0].ping_data == b"12345678"


def test_default_concurrent_streams():
    # Bounded (etcd: 2^32-1), far above the 250 of Go's HTTP/2 server.
    reg, _ = echo_registry()
    h = Harness(reg)
    assert h.client.remote_settings.max_concurrent_streams == 1000


def _raw_frames(data):
    import hyperframe.frame as hf
    frames, i = [], 0
    while i < len(data):
        frame, length = hf.Frame.parse_frame_header(memoryview(data[i:i + 9]))
        frame.parse_body(memoryview(data[i + 9:i + 9 + length]))
        frames.append(frame)
        i += 9 + length
    return frames


def test_goaway_after_inflight_call_finishes():
    # (h2's own client state machine closes on GOAWAY, so read the raw frames here.)
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"later"))
    done = h.server.shutdown()
    frames = _raw_frames(bytes(h.to_client))
    del h.to_client[:]
    assert [type(f).__name__ for f in frames] == ["GoAwayFrame"]
    assert frames[0].last_stream_id == sid and frames[0].error_code == 0
    assert not done.called and not h.lost
    d, req = handlers["pending"][0]
    d.callback(rpc.RangeResponse(count=1))
    frames = _raw_frames(bytes(h.to_client))
    kinds = [(type(f).__name__, f.stream_id, "END_STREAM" in f.flags) for f in frames]
    assert kinds == [("HeadersFrame", sid, False), ("DataFrame", sid, False),
                     ("HeadersFrame", sid, True)]
    assert h.lost
    h.server.connection_lost()
    assert done.called


def test_http_json_over_h2():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.client.get_next_available_stream_id()
    h.client.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                (":path", "/version"), (":authority", "x")], end_stream=True)
    h.pump()
    headers = body = None
    body = b""
    for ev in h.events:
        if getattr(ev, "stream_id", None) == sid:
            if isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
    assert headers[":status"] == "200"
    assert body == b'{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}'


def test_garbage_frames_close_connection_without_crash():
    reg, _ = echo_registry()
    h = Harness(reg)
    h.server.data_received(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01garbage!!" * 3)
    assert h.lost


def test_codec_helpers():
    assert parse_timeout("100m") == 0.1
    assert parse_timeout("5S") == 5
    assert parse_timeout("1H") == 3600
    assert parse_timeout("12345678S") == 12345678
    # grpc-go's decodeTimeout: a signed integer; zero or less is a deadline already past
    assert (parse_timeout("0n"), parse_timeout("-1S"), parse_timeout("+5S")) == (0, -1, 5)
    assert parse_timeout("1n") == 1e-9
    for bad in ("12x", "", "S", "1", "123456789S", "1_0S", "0x5S", " 5S", "5 S", "\u0665S",
                "1.5S"):
        with pytest.raises(ValueError):
            parse_timeout(bad)
    assert encode_grpc_message("plain text") == "plain text"
    dec = MessageDecoder(100)
    framed = frame_message(b"hello") + frame_message(b"") + frame_message(b"world")
    assert dec.feed(framed[:7]) == []
    assert dec.feed(framed[7:]) == [b"hello", b"", b"world"]
    assert dec.pending == 0


def test_corrupt_and_bomb_compressed_messages_fail_the_call_only():
    import zlib
    reg, _ = echo_registry()
    h = Harness(reg, settings=H2Settings(max_receive_message_size=4096))
    sid = h.start_call("/etcdserverpb.KV/Range", extra_headers=[("grpc-encoding", "gzip")])
    h.send(sid, struct.pack(">BI", 1, 10) + b"notgzip!!!", end=True)
    _, _, trailers = h.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.INTERNAL)
    assert trailers["grpc-message"].startswith(
        "grpc: failed to decompress the received message")
    bomb = zlib.compress(b"\0" * (64 << 20))       # 64 MiB inflated, ~64 KiB on the wire
    sid = h.start_call("/etcdserverpb.KV/Range", extra_headers=[("grpc-encoding", "deflate")])
    h.send(sid, struct.pack(">BI", 1, len(bomb)) + bomb[:4000], end=False)
    _, _, trailers = h.result(sid)
    # the announced (compressed) size already exceeds the limit here; now a bomb within it
    assert trailers["grpc-status"] == str(StatusCode.RESOURCE_EXHAUSTED)
    small_bomb = zlib.compress(b"\0" * (8 << 20))
    assert len(small_bomb) < 4096 * 4
    h2_ = Harness(reg, settings=H2Settings(max_receive_message_size=len(small_bomb) + 10))
    sid = h2_.start_call("/etcdserverpb.KV/Range",
                         extra_headers=[("grpc-encoding", "deflate")])
    h2_.send(sid, struct.pack(">BI", 1, len(small_bomb)) + small_bomb, end=True)
    _, _, trailers = h2_.result(sid)
    assert trailers["grpc-status"] == str(StatusCode.RESOURCE_EXHAUSTED)
    assert trailers["grpc-message"] == "grpc: received message larger than max (%d vs. %d)" % (
        len(small_bomb) + 11, len(small_bomb) + 10)
    # the connection is still usable
    sid = h2_.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"ok"))
    assert h2_.result(sid)[2]["grpc-status"] == "0"


def test_go_style_unmarshal_errors():
    from etcdadapter.transport.proto_decode import decode
    cases = {
        b"\x0a\x05ab": "unexpected EOF",
        b"\x08\x01": "proto: wrong wireType = 0 for field Key",
        b"\x00": "proto: RangeRequest: illegal tag 0 (wire type 0)",
        b"\x18" + b"\xff" * 10 + b"\x01": "proto: integer overflow",
        b"\x0c": "proto: RangeRequest: wiretype end group for non-group",
    }
    for payload, message in cases.items():
        try:
            decode(rpc.RangeRequest, payload)
        except EtcdError as e:
            assert (e.code, e.message) == (
                StatusCode.INTERNAL, "grpc: error unmarshalling request: " + message), payload
        else:
            raise AssertionError("accepted %r" % payload)
    # nested messages are checked too, unknown fields skipped
    txn = rpc.TxnRequest(success=[rpc.RequestOp(request_put=rpc.PutRequest(key=b"k"))])
    assert decode(rpc.TxnRequest, txn.SerializeToString() + b"\xf8\x07\x05").success == txn.success
    bad = b"\x12\x04\x12\x02\x08\x01"      # success[0].request_put.key as a varint
    try:
        decode(rpc.TxnRequest, bad)
    except EtcdError as e:
        assert e.message.endswith("proto: wrong wireType = 0 for field Key")
    else:
        raise AssertionError("accepted nested wrong wire type")


def test_pending_bytes_reports_what_flow_control_holds_back():
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.start_call("/etcdserverpb.Watch/Watch")
    h.pump()
    stream = handlers["streams"][0]
    assert stream.pending_bytes() == 0
    stream.send(rpc.WatchResponse(cancel_reason="x" * 200000))
    # the client has opened no window beyond HTTP/2's initial 65535 bytes
    assert stream.pending_bytes() > 200000 - 65535
    h.pump()                                   # the client reads and acknowledges
    assert stream.pending_bytes() == 0
    assert len(h.result(sid)[1]) == 1


# ---------------------------------------------------------------------------------------
# Many streams on one connection

def _open_more_than_we_advertise(h):
    # The h2 client honours our SETTINGS_MAX_CONCURRENT_STREAMS; a hostile one does not.
    h.client.remote_settings.max_concurrent_streams = 1 << 20
    h.client.remote_settings.acknowledge()


def _resets(h, sid):
    return [int(e.error_code) for e in h.events
            if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]


def _terminated(h):
    return [e for e in h.events if isinstance(e, h2.events.ConnectionTerminated)]


def test_streams_over_the_limit_are_refused_alone_and_hpack_stays_in_step():
    reg, handlers = echo_registry()
    h = Harness(reg, settings=H2Settings(max_concurrent_streams=3))
    _open_more_than_we_advertise(h)
    watches = [h.start_call("/etcdserverpb.Watch/Watch") for _ in range(3)]
    h.pump()
    assert len(handlers["streams"]) == 3
    # A fourth stream, with a header the client's HPACK encoder adds to its table.
    extra = [("x-custom", "value-to-index")]
    refused = h.start_call("/etcdserverpb.KV/Range", extra_headers=extra)
    h.pump()
    assert _resets(h, refused) == [h2.errors.ErrorCodes.REFUSED_STREAM]
    assert not _terminated(h) and not h.lost
    assert len(handlers["streams"]) == 3 and h.server.conn.refused_streams == 1
    # One watch ends: a new stream fits, and its header block (which refers to the entry
    # the refused one added) decodes.
    h.client.reset_stream(watches[0])
    h.pump()
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"abc"), extra)
    _, payloads, trailers = h.result(sid)
    assert trailers["grpc-status"] == "0"
    assert rpc.RangeResponse.FromString(payloads[0]).count == 3
    assert not _terminated(h)


def test_a_new_stream_costs_no_walk_over_the_open_ones():
    # h2 counts open streams by walking all of them for every new HEADERS (O(n^2) for n
    # streams); the count is kept as streams open and close instead.
    reg, handlers = echo_registry()
    h = Harness(reg)

    def walked(remainder):
        raise AssertionError("walked every stream to count the open ones")
    h.server.conn._open_streams = walked
    for i in range(20):
        h.start_call("/etcdserverpb.Watch/Watch")
    for i in range(30):
        sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"k%d" % i))
        assert h.result(sid)[2]["grpc-status"] == "0"
    h.pump()
    assert not _terminated(h)
    conn = h.server.conn
    # Closed streams leave h2's table at once (as h2's walk would have dropped them).
    assert conn.open_inbound_streams == 20 and len(conn.streams) == 20
    for stream in handlers["streams"][:5]:
        stream.finish()
    h.pump()
    assert conn.open_inbound_streams == 15 and len(conn.streams) == 15


def test_a_connection_window_update_wakes_only_streams_waiting_for_window(monkeypatch):
    from etcdadapter.transport import h2_server
    woken = []
    original = h2_server.GrpcCall.window_opened

    def spy(call):
        woken.append(call.stream_id)
        return original(call)
    monkeypatch.setattr(h2_server.GrpcCall, "window_opened", spy)
    reg, handlers = echo_registry()
    h = Harness(reg)
    sids = [h.start_call("/etcdserverpb.Watch/Watch") for _ in range(50)]
    h.pump()
    busy = handlers["streams"][7]
    busy.send(rpc.WatchResponse(cancel_reason="x" * 200000))   # beyond the windows
    h.clock.advance(0)
    assert busy.pending_bytes() > 0
    h.pump()            # the client reads: connection and stream WINDOW_UPDATEs
    assert busy.pending_bytes() == 0
    assert set(woken) == {sids[7]}, sorted(set(woken))


# ---------------------------------------------------------------------------------------
# What etcd (grpc-go) does with odd requests

def _raw_headers_frame(h, sid, headers, end_stream):
    import hyperframe.frame
    f = hyperframe.frame.HeadersFrame(sid)
    f.data = h.client.encoder.encode(headers)
    f.flags.add("END_HEADERS")
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def test_request_trailers_reset_a_grpc_stream():
    reg, handlers = echo_registry()
    h = Harness(reg)
    # Unary: HEADERS, DATA, trailers: RST_STREAM PROTOCOL_ERROR, the handler never runs.
    sid = h.start_call("/etcdserverpb.KV/Range")
    later = rpc.RangeRequest(key=b"later").SerializeToString()
    h.client.send_data(sid, frame_message(later))
    h.client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    h.pump()
    assert _resets(h, sid) == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
    assert h.result(sid) == (None, [], None) and handlers["pending"] == []
    # A watch: its answers so far stand, then the reset; the handler is cancelled.
    sid = h.start_call("/etcdserverpb.Watch/Watch")
    req = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"a", watch_id=3))
    h.send(sid, frame_message(req.SerializeToString()))
    h.client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    h.pump()
    assert _resets(h, sid) == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
    assert len(h.result(sid)[1]) == 1 and handlers["cancelled"] == handlers["streams"]
    # Trailers without END_STREAM (malformed; h2 alone makes it a connection error):
    # the stream is reset, the connection serves on.
    sid = h.start_call("/etcdserverpb.KV/Range")
    h.client.send_data(sid, frame_message(rpc.RangeRequest(key=b"x").SerializeToString()))
    h.pump()
    h.server.data_received(_raw_headers_frame(h, sid, [("x-trailer", "1")], False))
    h.pump()
    assert _resets(h, sid) == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
    assert not _terminated(h) and not h.lost
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"ok"))
    assert h.result(sid)[2]["grpc-status"] == "0"


def test_trailers_end_an_http_request_as_its_end():
    reg, _ = echo_registry()
    h = Harness(reg)
    sid = h.client.get_next_available_stream_id()
    h.client.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                (":path", "/version"), (":authority", "x")])
    h.client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    h.pump()
    heads = [dict(e.headers) for e in h.events
             if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
    assert heads and heads[0][":status"] == "200"


def test_one_goaway_on_a_protocol_error():
    reg, _ = echo_registry()
    h = Harness(reg)
    del h.to_client[:]
    h.server.data_received(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01garbage!!")
    goaways = [f for f in _raw_frames(bytes(h.to_client)) if f.type == 7]
    assert [f.error_code for f in goaways] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
    assert h.lost


@pytest.mark.parametrize("value", ["12x", "S", "1", "123456789S", "1_0S", "-S", ""])
def test_a_malformed_grpc_timeout_resets_the_stream(value):
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"later"),
                  extra_headers=[("grpc-timeout", value)])
    assert _resets(h, sid) == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
    assert handlers["pending"] == [] and not _terminated(h)


@pytest.mark.parametrize("value", ["0n", "0S", "-1S", "-0n"])
def test_a_grpc_timeout_already_past_ends_the_call_before_its_handler(value):
    reg, handlers = echo_registry()
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"later"),
                  extra_headers=[("grpc-timeout", value)])
    headers, payloads, trailers = h.result(sid)
    assert (trailers["grpc-status"], trailers["grpc-message"], payloads) == (
        str(StatusCode.DEADLINE_EXCEEDED), "context deadline exceeded", [])
    assert handlers["pending"] == []
    sid = h.start_call("/etcdserverpb.Watch/Watch", [("grpc-timeout", value)])
    h.pump()
    assert h.result(sid)[2]["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED)
    assert handlers["streams"] == []


def test_repeated_metadata_the_first_value_wins():
    reg = MethodRegistry()
    seen = []

    def handler(request, context):
        seen.append(context.metadata)
        return rpc.RangeResponse()
    reg.add(Method("/etcdserverpb.KV/Range", rpc.RangeRequest, rpc.RangeResponse, UNARY,
                   handler))
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"a"), extra_headers=[
        ("token", "first"), ("authorization", "a1"), ("token", "second"),
        ("authorization", "a2")])
    assert h.result(sid)[2]["grpc-status"] == "0"
    assert (seen[0]["token"], seen[0]["authorization"]) == ("first", "a1")


def test_nested_txns_decode_a_level_at_a_time():
    # protobuf's parser stops at 100 message levels (50 txn levels); etcd takes 129.
    from etcdadapter import errors
    from etcdadapter.services.kv import check_txn
    from etcdadapter.transport.proto_decode import decode

    def levels(txn):
        n = 1
        while txn.success and txn.success[0].WhichOneof("request") == "request_txn":
            txn = txn.success[0].request_txn
            n += 1
        return n, txn
    raw = nested_txn(129, PUT_ONLY)
    txn = decode(rpc.TxnRequest, raw)
    assert txn.SerializeToString() == raw           # the same message, all of it
    check_txn(txn, 10 ** 6)
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn, 128)                         # etcd's budget: 128 levels of 1 op
    # Deeper than any txn may nest: built to level 130, which is left empty and refused
    # whatever the op budget.
    txn = decode(rpc.TxnRequest, nested_txn(300000, PUT_ONLY))
    depth, innermost = levels(txn)
    assert depth == errors.MAX_TXN_LEVELS + 1 and innermost == rpc.TxnRequest()
    for budget in (128, 10 ** 6):
        with pytest.raises(errors.ErrTooManyOps):
            check_txn(txn, budget)
    # A RequestOp's oneof: the last member on the wire wins, at any depth.
    put = rpc.RequestOp(request_put=rpc.PutRequest(key=b"p")).SerializeToString()
    inner = rpc.RequestOp(request_txn=rpc.TxnRequest()).SerializeToString()
    for op, which in ((inner + put, "request_put"), (put + inner, "request_txn")):
        shallow = b"\x12" + bytes([len(op)]) + op
        assert rpc.TxnRequest.FromString(shallow).success[0].WhichOneof("request") == which
        deep = decode(rpc.TxnRequest, nested_txn(60, shallow))
        assert levels(deep)[0] == 60 + (which == "request_txn")


def test_a_header_value_that_is_not_utf8_is_carried_not_a_crash():
    # grpc-go accepts any field value RFC 7230 allows (obs-text bytes too); such a value
    # once raised UnicodeDecodeError out of the connection (h2 decoded headers as UTF-8).
    reg, _ = echo_registry()
    seen = []
    original = reg.lookup("/etcdserverpb.KV/Range").handler

    def handler(request, context):
        seen.append(context.metadata)
        return original(request, context)
    reg.lookup("/etcdserverpb.KV/Range").handler = handler
    h = Harness(reg)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"abc"),
                  extra_headers=[(b"x-bad", b"\xff\xfe"), (b"x-bad", b"second")])
    _, payloads, trailers = h.result(sid)
    assert trailers["grpc-status"] == "0" and not h.lost
    assert rpc.RangeResponse.FromString(payloads[0]).count == 3
    assert seen[0]["x-bad"] == "\xff\xfe"          # byte for byte; the first one wins
    # The same header list again (cached) gives the same metadata.
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"abcd"),
                  extra_headers=[(b"x-bad", b"\xff\xfe"), (b"x-bad", b"second")])
    assert h.result(sid)[2]["grpc-status"] == "0"
    assert seen[1] == seen[0] and seen[1]["x-bad"] == "\xff\xfe"

"""The pure parts of the connection limits, without sockets: the deadline phases, the
HTTP/2 frame guard, and H2Server holding new streams while its output is over budget and
closing idle connections with GOAWAY (fake clock, h2 client over byte buffers).
The same behaviour on the real daemon: test_limits.py."""

import struct

import h2.errors
import h2.events
import pytest
from twisted.internet import task

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.transport import h2_server
from etcdadapter.transport.deadlines import BUSY, HEAD, IDLE, Deadlines
from etcdadapter.transport.h2_frame_guard import FrameGuard, FrameLimitExceeded
from etcdadapter.transport.limits import ConnectionStats, LogThrottle
from etcdadapter.transport.output_budget import MIN_BUDGET, OutputBudget

from support.h2_harness import Harness, echo_registry


def _deadlines(header=10.0, idle=300.0):
    clock = task.Clock()
    expired = []
    return clock, expired, Deadlines(clock, header, idle, expired.append)


def test_the_header_deadline_is_not_extended_by_trickling_bytes():
    clock, expired, d = _deadlines()
    d.head()
    for _ in range(9):
        clock.advance(1)
        d.head()            # more head bytes: same deadline
    assert expired == []
    clock.advance(1)
    assert expired == [HEAD] and d.phase == "closed"
    d.idle()                # a closed connection's deadlines stay off
    clock.advance(1000)
    assert expired == [HEAD]


def test_body_stall_busy_and_idle():
    clock, expired, d = _deadlines()
    d.head()
    clock.advance(5)
    d.body()
    for _ in range(5):
        clock.advance(9)
        d.body()            # each body chunk restarts the stall timeout
    d.busy()
    clock.advance(10000)    # a request being answered (a watch) has no deadline
    assert expired == [] and d.phase == BUSY
    d.idle()
    clock.advance(299)
    d.idle()                # still idle: the idle deadline is not extended
    clock.advance(1)
    assert expired == [IDLE]


def test_busy_and_idle_turns_keep_one_timer_and_each_idle_counts_from_its_start():
    # An HTTP/2 connection turns busy and idle for every call it answers: no reactor
    # timer is made or cancelled for that, yet the idle deadline runs from the last turn.
    clock, expired, d = _deadlines()
    d.idle()
    [timer] = clock.getDelayedCalls()
    for _ in range(1000):
        clock.advance(0.1)
        d.busy()
        d.idle()
    assert [call is timer for call in clock.getDelayedCalls()] == [True]
    clock.advance(300 - 100)    # the first timer fires at 300 s, idle since 100 s only
    assert expired == [] and d.phase == IDLE
    clock.advance(99.9)
    assert expired == []
    clock.advance(0.1)
    assert expired == [IDLE] and clock.getDelayedCalls() == []


def test_an_earlier_deadline_moves_the_timer_and_stop_cancels_it():
    clock, expired, d = _deadlines()
    d.idle()                    # 300 s
    clock.advance(1)
    d.head()                    # the next HTTP/1.1 request began: 10 s for its head
    clock.advance(9.9)
    assert expired == []
    clock.advance(0.1)
    assert expired == [HEAD]
    clock, expired, d = _deadlines()
    d.head()
    d.stop()                    # a closed connection leaves no timer holding it
    assert clock.getDelayedCalls() == [] and d.phase == "closed"
    d.idle()
    clock.advance(1000)
    assert expired == [] and clock.getDelayedCalls() == []


def test_a_zero_timeout_is_off():
    clock, expired, d = _deadlines(header=0, idle=0)
    d.head()
    d.body()
    d.idle()
    clock.advance(1e6)
    assert expired == [] and d.phase == IDLE


def test_log_throttle():
    clock = task.Clock()
    t = LogThrottle(clock, 10)
    assert [t.due(), t.due(), t.due()] == [1, 0, 0]
    clock.advance(10)
    assert t.due() == 3


def _frame(kind, flags, length, stream=1):
    return struct.pack(">I", length)[1:] + bytes([kind, flags]) + struct.pack(">I", stream)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_frame_guard_sees_headers_split_anywhere_and_skips_bodies():
    g = FrameGuard(max_frame_size=100, max_header_block=250)
    # A DATA body that looks like an oversized frame header is skipped, not parsed.
    stream = PREFACE + _frame(0, 0, 9) + _frame(0, 0, 1 << 20) + _frame(1, 0, 100) + \
        b"h" * 100 + _frame(9, 0, 100) + b"c" * 100 + _frame(9, 4, 50) + b"c" * 50
    for i in range(len(stream)):
        g.feed(stream[i:i + 1])
    # Block closed (END_HEADERS): a new one may be as large again.
    g.feed(_frame(1, 0, 100) + b"h" * 100 + _frame(9, 0, 100) + b"c" * 100)
    with pytest.raises(FrameLimitExceeded) as e:
        g.feed(_frame(9, 0, 51)[:5])
        g.feed(_frame(9, 0, 51)[5:])
    assert e.value.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_frame_guard_refuses_an_oversized_frame_at_its_header():
    g = FrameGuard(max_frame_size=16384, max_header_block=1 << 20)
    g.feed(PREFACE)
    with pytest.raises(FrameLimitExceeded) as e:
        g.feed(_frame(0, 0, 16385))
    assert e.value.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR


def _budgeted_harness():
    reg, handlers = echo_registry()
    h = Harness(reg)
    unsent = [0]
    h.server.budget = OutputBudget(MIN_BUDGET, lambda: unsent[0])
    h.server.stats = ConnectionStats()
    return h, unsent, handlers


def _status(h, sid):
    return (h.result(sid)[2] or {}).get("grpc-status")


def test_new_streams_wait_while_the_output_is_over_budget():
    h, unsent, _ = _budgeted_harness()
    unsent[0] = MIN_BUDGET + 1           # the socket holds more than the budget
    sids = [h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"k%d" % i))
            for i in range(3)]
    reset = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"gone"))
    h.client.reset_stream(reset)
    h.pump()
    assert [_status(h, s) for s in sids] == [None, None, None]
    assert h.server.stats.paused == 1
    unsent[0] = 0
    h.server.output_drained()            # Twisted: the write buffer is empty
    h.pump()
    assert [_status(h, s) for s in sids] == ["0", "0", "0"]
    answers = [rpc.RangeResponse.FromString(h.result(s)[1][0]).kvs[0].key for s in sids]
    assert answers == [b"k0", b"k1", b"k2"]
    assert h.result(reset)[0] is None    # reset while waiting: never dispatched


def test_flow_controlled_output_counts_and_too_many_waiting_streams_are_refused(
        monkeypatch):
    monkeypatch.setattr(h2_server, "MAX_HELD_STREAMS", 2)
    h, unsent, _ = _budgeted_harness()
    h.client.acknowledge_received_data = lambda *args: None     # a client that sits
    # A response the client's 64 KiB window cannot take: the rest waits in its Outbox.
    big = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"big",
                                                                limit=MIN_BUDGET + 70000))
    assert h.server.budget.queued > MIN_BUDGET
    sids = [h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"w%d" % i))
            for i in range(3)]
    resets = [e for e in h.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == \
        [(sids[2], h2.errors.ErrorCodes.REFUSED_STREAM)]
    assert [_status(h, s) for s in sids[:2]] == [None, None]
    # The client reads: window updates drain the Outbox, the waiting streams go on.
    for _ in range(3):
        h.client.increment_flow_control_window(1 << 20)
        if _status(h, big) is None:
            h.client.increment_flow_control_window(1 << 20, stream_id=big)
        h.pump()
    assert _status(h, big) == "0"
    assert h.server.budget.queued == 0
    assert [_status(h, s) for s in sids[:2]] == ["0", "0"]


def test_idle_connection_gets_goaway_then_closes():
    reg, handlers = echo_registry()
    h = Harness(reg)
    expired = []
    h.server.deadlines = d = Deadlines(h.clock, 10, 5, expired.append)
    sid = h.unary("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"a"))
    assert _status(h, sid) == "0" and d.phase == IDLE
    # An open stream (a watch) is never idle.
    watch = h.start_call("/etcdserverpb.Watch/Watch")
    h.pump()
    assert d.phase == BUSY
    h.clock.advance(100)
    assert expired == []
    h.client.reset_stream(watch)
    h.pump()
    assert d.phase == IDLE
    h.clock.advance(5)
    assert expired == [IDLE]
    h.server.close_idle()
    h.pump()
    goaway = [e for e in h.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [(g.error_code, g.last_stream_id) for g in goaway] == \
        [(h2.errors.ErrorCodes.NO_ERROR, watch)]
    assert not h.lost                     # time for the client to read the GOAWAY
    h.clock.advance(h2_server.IDLE_LINGER)
    assert h.lost


def test_phases_of_an_http2_connection_start_with_its_settings():
    reg, _ = echo_registry()
    clock = task.Clock()
    expired = []
    d = Deadlines(clock, 10, 5, expired.append)
    d.head()
    server = h2_server.H2Server(lambda data: None, lambda: None, reg, None, clock,
                                deadlines=d)
    server.initiate()
    server.data_received(PREFACE)
    assert d.phase == HEAD               # the preface alone is not a complete head
    server.data_received(_frame(4, 0, 0, stream=0))
    assert d.phase == IDLE
    clock.advance(5)
    assert expired == [IDLE]

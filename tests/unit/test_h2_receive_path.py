"""ServerConnection.receive_data takes DATA, WINDOW_UPDATE and single-frame HEADERS straight
from the buffer; everything else (and every such frame h2 would refuse or treat specially) goes
h2's way.  Random client traffic -- well-formed and not -- fed in random pieces to a
connection receiving that way and to one receiving through h2's own loop must give the
same events, the same errors, the same bytes to send and the same stream and window
state."""

import random
import struct

import h2.config
import h2.connection
import h2.exceptions
import pytest

from etcdadapter.transport.h2_connection import ServerConnection


def _server():
    config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                       validate_inbound_headers=False,
                                       normalize_inbound_headers=False)
    conn = ServerConnection(config, 100)
    conn.initiate_connection()
    conn.data_to_send()
    return conn


def _h2_receive(conn, data):
    return h2.connection.H2Connection.receive_data(conn, data)


def _frame(kind, flags, stream_id, body):
    return struct.pack(">HBBBL", len(body) >> 8, len(body) & 0xFF, kind, flags,
                       stream_id) + body


def _event(e):
    return type(e).__name__, sorted((k, repr(v)) for k, v in vars(e).items())


def _state(conn):
    return (conn.outbound_flow_control_window,
            conn._inbound_flow_control_window_manager.current_window_size,
            conn.state_machine.state,
            sorted((sid, s.state_machine.state, s.outbound_flow_control_window,
                    s._inbound_window_manager.current_window_size)
                   for sid, s in conn.streams.items()),
            sorted(conn._closed_streams.items()), conn.open_inbound_streams)


def _traffic(rng):
    """Client bytes: a real h2 client's calls, and frames a client should not send."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    out = [client.data_to_send()]
    open_ids = []
    for _ in range(rng.randrange(5, 40)):
        r = rng.random()
        if r < 0.25 or not open_ids:
            sid = client.get_next_available_stream_id()
            headers = [(":method", "POST"), (":scheme", "http"), (":path", "/x"),
                       (":authority", "a")]
            if rng.random() < 0.1:
                headers.append(("big", "b" * 20000))        # CONTINUATION frames
            client.send_headers(sid, headers, end_stream=rng.random() < 0.1,
                                priority_weight=rng.choice([None, None, None, 16]))
            if not client.streams[sid].closed:
                open_ids.append(sid)
        elif r < 0.3:
            sid = rng.choice(open_ids)
            try:
                client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
            except (h2.exceptions.ProtocolError, KeyError):
                pass
            open_ids.remove(sid)
        elif r < 0.5:
            sid = rng.choice(open_ids)
            n = rng.choice([0, 1, 100, 5000])
            pad = rng.choice([None, None, 0, 7])
            end = rng.random() < 0.3
            try:
                client.send_data(sid, b"d" * n, end_stream=end, pad_length=pad)
            except (h2.exceptions.ProtocolError, KeyError):    # (the client refuses it)
                pass
            if end and sid in open_ids:
                open_ids.remove(sid)
        elif r < 0.65:
            sid = rng.choice([0, rng.choice(open_ids)])
            try:
                client.increment_flow_control_window(rng.choice([1, 1000, 65535]),
                                                     sid or None)
            except (h2.exceptions.ProtocolError, KeyError):
                pass
        else:
            # Frames written by hand (the client's state is not told).
            sid = rng.choice(open_ids + [1, 2, 3, 999])
            out.append(client.data_to_send())
            out.append(rng.choice([
                _frame(0x8, 0, sid, struct.pack(">L", rng.choice([1, 100, 0, 2 ** 31 - 1,
                                                                  2 ** 31 + 5]))),
                _frame(0x8, 0, 0, struct.pack(">L", rng.choice([1, 2 ** 31 - 1]))),
                _frame(0x8, 0, sid, b"\0\0\1"),
                _frame(0x0, rng.choice([0, 1]), sid, b"x" * rng.choice([0, 10])),
                _frame(0x0, 0x8, sid, b"\x20" + b"x" * 5),      # padding too long
                _frame(0x0, 0, sid | 0x80000000, b"r"),          # reserved bit
                _frame(0x3, 0, sid, struct.pack(">L", 8)),       # RST_STREAM
                _frame(0x0, 0, 0, b"zero"),
                _frame(0x1, 0x4, sid, b"\x83\x86"),             # HEADERS, maybe trailers
                _frame(0x1, 0x5, sid + rng.choice([0, 2, 4]), b"\x83\x86\x84"),
                _frame(0x1, 0x4 | 0x8, sid, b"\x01\x83\x00"),  # padded
                _frame(0x1, 0x4 | 0x20, sid, b"\0\0\0\0\x10\x83"),  # priority
                _frame(0x1, 0x4, sid, b"\xff\xff\xff"),        # HPACK garbage
                _frame(0x1, 0x4, 0, b"\x83"),
                _frame(0x1, 0, sid, b"\x83") + _frame(0x9, 0x4, sid, b"\x86"),
            ]))
    out.append(client.data_to_send())
    return b"".join(out)


def _outcome(conn, receive, chunk):
    try:
        events = [_event(e) for e in receive(conn, chunk)]
        error = None
    except h2.exceptions.ProtocolError as e:
        events, error = [], (type(e).__name__, getattr(e, "error_code", None))
    return events, error, conn.data_to_send(), _state(conn)


@pytest.mark.parametrize("seed", range(300))
def test_frames_taken_straight_from_the_buffer_are_what_h2_makes_of_them(seed):
    rng = random.Random(seed)
    data = _traffic(rng)
    fast, general = _server(), _server()
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 9, 13, 50, 400, len(data)])
        chunk, pos = data[pos:pos + n], pos + n
        got = _outcome(fast, ServerConnection.receive_data, chunk)
        want = _outcome(general, _h2_receive, chunk)
        assert got == want, (seed, pos)
        if want[1] is not None:
            break               # the connection is over

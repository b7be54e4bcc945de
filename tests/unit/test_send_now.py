"""send_now: HTTP/2 output reaches the kernel within the reactor turn that made it (the
client can read an answer while the server handles the next calls of the same read), and
nothing overtakes bytes Twisted still holds."""

import socket

from twisted.internet import protocol, tcp
from twisted.internet.epollreactor import EPollReactor

from etcdadapter.transport.output_budget import send_now, unsent_bytes


_REACTOR = EPollReactor()


def _connection():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    # A reactor of its own, never run: the process's global one may be running in
    # another thread (an embedding test in the same worker) and would write too.
    transport = tcp.Server(ours, protocol.Protocol(), ("127.0.0.1", 1), None, 1,
                           _REACTOR)
    return transport, peer


def _close(transport, peer):
    transport.stopReading()         # (tcp.Server registered the socket with the reactor)
    transport.stopWriting()
    transport.socket.close()
    peer.close()


def _read_all(peer):
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_output_is_in_the_socket_at_once_and_keeps_its_order_when_the_socket_fills():
    transport, peer = _connection()
    try:
        send_now(transport, b"answer-1")
        assert _read_all(peer) == b"answer-1"            # no reactor turn needed
        assert unsent_bytes(transport) == 0
        # The client stops reading: what the kernel does not take waits in Twisted's
        # buffer, and later output queues behind it instead of overtaking it.
        big = bytes(range(256)) * 40000                   # ~10 MB, more than a socket holds
        send_now(transport, big)
        left = unsent_bytes(transport)
        assert 0 < left < len(big)
        send_now(transport, b"answer-2")
        assert unsent_bytes(transport) == left + len(b"answer-2")
        got = b""
        while unsent_bytes(transport):
            got += _read_all(peer)
            transport.doWrite()                           # the reactor's turn
        got += _read_all(peer)
        want = big + b"answer-2"
        assert len(got) == len(want)
        assert got == want, "first difference at byte %d" % next(
            i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    finally:
        _close(transport, peer)


def test_a_closing_connection_is_left_to_twisted():
    transport, peer = _connection()
    try:
        transport.disconnecting = True                    # loseConnection under way
        send_now(transport, b"late")
        assert unsent_bytes(transport) == 4 and _read_all(peer) == b""
    finally:
        _close(transport, peer)

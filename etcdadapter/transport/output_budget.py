"""How many response bytes one connection holds that the client has not taken yet.

A client can ask for far more than it reads: many small requests for large values, then
never read (an amplification attack), or never grant HTTP/2 flow-control window.  The
bytes pile up in two places: the transport's write buffer (the kernel would not take
them) and, on HTTP/2, each stream's queue behind flow control.  :class:`OutputBudget`
adds both up per connection; the transports stop dispatching new requests (and, when the
socket itself is full, stop reading) while it is over, and carry on once it drains.
"""

from twisted.internet import tcp

DEFAULT_BUDGET = 4 << 20       # a few responses of etcd's largest (1.5 MiB) values
MIN_BUDGET = 256 << 10         # above Twisted's 64 KiB write-buffer mark (see below)


def unsent_bytes(transport):
    """Bytes a Twisted transport holds that the kernel has not taken yet.

    TLS wrappers forward unknown attributes to the socket transport under them, so only
    the innermost transport (twisted.internet.abstract.FileDescriptor) is counted; a TLS
    layer's own buffers (a handshake's worth, 64 KB of write aggregation) are small."""
    while getattr(transport, "wrappedProtocol", None) is not None:
        transport = transport.transport
    if transport is None:
        return 0
    buf = getattr(transport, "dataBuffer", None)
    if buf is None:
        return 0
    return len(buf) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


def send_now(transport, data):
    """Write ``data`` to ``transport``, handed to the kernel at once when nothing waits
    before it (a plain TCP connection).  Twisted sends what a protocol writes on the
    reactor's next turn, so the answers to the calls of one read went out together
    after the last one was made: with calls in flight the client waited while we worked
    and we while it did (on 2 cores, 1.1-1.4x the throughput this way).  What the kernel
    does not take now, and all output over TLS, goes through the transport's buffer."""
    if type(transport) is tcp.Server and not transport.TLS and transport.connected \
            and not transport.disconnecting and not unsent_bytes(transport):
        sent = transport.writeSomeData(data)
        if sent == len(data):
            return
        if isinstance(sent, int):
            data = data[sent:]
    transport.write(data)     # (after an error too: the transport then sees it itself)


class OutputBudget(object):
    """The unsent bytes of one connection against a limit.

    ``queued`` counts the bytes held in :class:`Outbox` queues (HTTP/2 flow control);
    ``transport_unsent`` returns the transport's part.  Twisted tells a registered
    producer when its write buffer passes 64 KiB and again when it is empty; a budget of
    at least :data:`MIN_BUDGET` means "over because of the socket" always ends with that
    second call, which is when held requests are released."""

    def __init__(self, limit=DEFAULT_BUDGET, transport_unsent=lambda: 0):
        self.limit = max(limit, MIN_BUDGET)
        self.transport_unsent = transport_unsent
        self.queued = 0

    def unsent(self):
        return self.queued + self.transport_unsent()

    def over(self):
        return self.unsent() > self.limit

    def socket_over(self):
        """The kernel is not taking our bytes: reading more requests only adds work."""
        return self.transport_unsent() > self.limit


class Outbox(object):
    """One stream's response bytes waiting for flow-control window, counted in its
    connection's :class:`OutputBudget`."""

    __slots__ = ("_data", "_budget")

    def __init__(self, budget):
        self._data = bytearray()
        self._budget = budget

    def __len__(self):
        return len(self._data)

    def __bool__(self):
        return bool(self._data)

    def add(self, data):
        self._data += data
        self._budget.queued += len(data)

    def take(self, size):
        """The first ``size`` bytes, removed."""
        chunk = bytes(self._data[:size])
        del self._data[:size]
        self._budget.queued -= len(chunk)
        return chunk

    def clear(self):
        self._budget.queued -= len(self._data)
        self._data.clear()

"""Reading the revision counter on the reactor thread, without a pool thread.

Every linearizable read first asks the database for its current revision (the read
barrier, :mod:`.barrier`).  Through the pool that is two thread hand-offs per query, and
under load each waits for the GIL; on a connection the reactor drives itself it is one
send and one readable socket.  :class:`SocketRevisionReader` does the reactor side: the
connection is opened in a thread (connecting blocks), then each query is written and its
answer parsed as the socket becomes readable, by the dialect's small protocol code
(``_send``/``_receive``).  Anything unexpected -- an error, a closed socket, no answer
within ``TIMEOUT`` -- drops the connection and fails the query, and the store asks the
pool instead; the next query reconnects in the background.

The reactor watches a duplicate of the driver's socket descriptor, so that a driver that
closes its socket on an error (libpq does) never leaves the reactor watching a closed
(and soon reused) descriptor.
"""

import os

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

TIMEOUT = 2.0            # seconds a query may take before the pool takes over


class ReaderUnavailable(Exception):
    """Not connected (yet): use the pool."""


class SocketRevisionReader(object):
    """Subclasses implement ``_connect()`` (in a thread: a connected driver connection),
    ``_fileno(conn)``, ``_send(conn)`` (write the query) and ``_receive(conn)`` (read
    what arrived: the (revision, compact_revision) answer, or None until it is
    complete)."""

    def __init__(self, dialect, reactor):
        self.dialect = dialect
        self.reactor = reactor
        self.conn = None
        self._fd = -1                # our duplicate of the connection's socket
        #: Called (reactor thread) when a connection was made: the database answers.
        self.on_connected = None
        self.queries = 0
        self._connecting = False
        self._pending = None         # the Deferred of the query in flight
        self._timer = None
        self._reading = False
        self._closed = False

    # -- the store's side -----------------------------------------------------------------
    def read(self):
        if self.conn is None:
            self._connect_soon()
            return defer.fail(ReaderUnavailable())
        if self._pending is not None:
            return defer.fail(ReaderUnavailable())      # the barrier runs one at a time
        try:
            self._send(self.conn)
        except Exception:
            self._drop()
            return defer.fail(Failure())
        self.queries += 1
        d = self._pending = defer.Deferred()
        self._timer = self.reactor.callLater(TIMEOUT, self._timed_out)
        self._reading = True
        self.reactor.addReader(self)
        return d

    def close(self):
        self._closed = True
        self._drop()

    # -- IReadDescriptor --------------------------------------------------------------------
    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "revision-reader"

    def doRead(self):
        if self._pending is None:
            self._drop()             # bytes nobody asked for
            return
        try:
            answer = self._receive(self.conn)
        except Exception:
            self._fail(Failure())
            return
        if answer is not None:
            d, self._pending = self._pending, None
            self._stop_waiting()
            d.callback(answer)

    def connectionLost(self, reason):
        self._fail(reason)

    # -- internals ---------------------------------------------------------------------------
    def _connect_soon(self):
        if self._connecting or self._closed:
            return
        self._connecting = True

        def connected(conn):
            self._connecting = False
            if self._closed:
                self._close_conn(conn)
                return
            try:
                self._fd = os.dup(self._fileno(conn))
            except Exception:
                self._close_conn(conn)
                return
            self.conn = conn
            if self.on_connected is not None:
                self.on_connected()

        def failed(f):
            self._connecting = False
            log.debug("revision reader: cannot connect: {e}", e=f.getErrorMessage())
        deferToThread(self._connect).addCallbacks(connected, failed)

    def _timed_out(self):
        self._timer = None
        self._fail(Failure(ReaderUnavailable("no answer in %.1fs" % TIMEOUT)))

    def _fail(self, failure):
        d, self._pending = self._pending, None
        self._drop()
        if d is not None:
            d.errback(failure)

    def _stop_waiting(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _drop(self):
        self._stop_waiting()
        conn, self.conn = self.conn, None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if conn is not None:
            self._close_conn(conn)
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(ReaderUnavailable("connection dropped"))

    @staticmethod
    def _close_conn(conn):
        try:
            conn.close()
        except Exception:
            pass


#: The query every reader sends.
QUERY = "SELECT revision, compact_revision FROM etcd_meta WHERE id = 1"

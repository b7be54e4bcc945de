"""Database connections the reactor drives itself: statements sent and answered without
a pool thread.

Through the pool every database call is two thread hand-offs, and under load each
waits for the GIL: on a 2-core machine those hand-offs, not the database, bounded the
write batches and the read barrier.  A :class:`ReactorConnection` is opened by the
driver in a thread (connecting blocks; authentication and TLS are the driver's), then
the reactor writes each *script* -- a list of (sql, params) statements, sent at once
where the protocol allows -- and parses the answers as the socket becomes readable,
with the dialect's small protocol code (``_send``/``_receive``: MySQL's text protocol
over PyMySQL's socket, PostgreSQL through libpq's asynchronous API).

Errors come out as the driver's own exceptions, so ``Dialect.classify`` applies; a closed
socket, or no answer within ``timeout``, drops the connection (the database rolls back
what was open) and fails the script with a DISCONNECT-class error.  One script at a time.
The reactor watches the socket for as long as it is connected, so a connection the
server closes between scripts (a restart, an idle timeout) is dropped at once, and the
next script connects anew instead of writing into a dead socket.

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


class NotConnected(Exception):
    """No connection (yet), or a script is in flight already."""


class ReactorConnection(object):
    """Subclasses implement ``_connect()`` (in a thread: a connected driver connection),
    ``_fileno(conn)``, ``_send(conn, statements)`` (start writing a script: bytes for
    :meth:`_write`, or None when the driver writes itself), ``_receive(conn)`` (read what
    arrived: the list of result sets once complete, the driver's exception for an
    error the server answered -- the connection stays usable --, else None) and
    ``_lost()`` (the driver's exception for a connection that went away)."""

    def __init__(self, dialect, reactor, timeout):
        self.dialect = dialect
        self.reactor = reactor
        self.timeout = timeout
        self.conn = None
        #: What the dialect has set on this connection (Dialect.begin_write_bounded).
        self.settings = {}
        #: Scripts sent (for /metrics' statement count).
        self.statements = 0
        #: Called (reactor thread) when a connection was made: the database answers.
        self.on_connected = None
        self._fd = -1
        self._connecting = None      # the Deferred of a connection being made
        self._pending = None         # the Deferred of the script in flight
        self._out = b""              # bytes of it not written yet
        self._deadline = None        # when the script in flight counts as unanswered
        self._timer = None           # checks the deadline (see _watch)
        self._reading = self._writing = False
        self._closed = False

    @property
    def connected(self):
        return self.conn is not None

    def connect(self):
        """Deferred firing once connected (at once if connected); fails with the
        driver's error."""
        if self.conn is not None:
            return defer.succeed(None)
        if self._closed:
            return defer.fail(NotConnected("closed"))
        if self._connecting is None:
            self._connecting = deferToThread(self._connect)
            self._connecting.addBoth(self._connected)
        out = defer.Deferred()

        def relay(result):
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(None)
            return result
        self._connecting.addBoth(relay)
        return out

    def _connected(self, result):
        self._connecting = None
        if isinstance(result, Failure):
            return None                  # the callers got it
        conn = result
        if self._closed:
            self._close_conn(conn)
            return None
        try:
            self._fd = os.dup(self._fileno(conn))
        except Exception:
            self._close_conn(conn)
            return None
        self.conn = conn
        self.settings = {}
        self._reading = True
        self.reactor.addReader(self)
        if self.on_connected is not None:
            self.on_connected()
        return None

    def script(self, statements, check_closed=True):
        """Deferred[list of result sets] of (sql, params or None) statements.  Fails
        with NotConnected, having sent nothing, when the server has closed the
        connection (a write then knows it was not applied); ``check_closed`` False
        saves that look at the socket where it does not matter (a read: a connection
        found closed later fails the script all the same)."""
        if check_closed and self.conn is not None and self._pending is None \
                and self._closed_by_peer():
            log.debug("{db}: connection closed by the server", db=self.dialect.describe())
            self._drop()
        if self.conn is None or self._pending is not None:
            return defer.fail(NotConnected())
        try:
            out = self._send(self.conn, statements)
        except Exception:
            self._drop()
            return defer.fail(Failure())
        self.statements += len(statements)
        d = self._pending = defer.Deferred()
        self._watch()
        if out:
            self._out = out
            self._write()
        return d

    def close(self):
        self._closed = True
        self._drop()

    def close_connection(self):
        """Drop the connection (the database rolls back what was open); the next
        :meth:`connect` makes a new one."""
        self._drop()

    # -- IReadDescriptor / IWriteDescriptor ---------------------------------------------------
    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "sql-connection"

    def doRead(self):
        if self._pending is None:
            # Between scripts only the end of the connection (or bytes nobody asked
            # for) can arrive: either way it is done.
            log.debug("{db}: connection closed by the server", db=self.dialect.describe())
            self._drop()
            return
        try:
            answer = self._receive(self.conn)
        except Exception:
            self._fail(Failure())
            return
        if answer is not None:
            d, self._pending = self._pending, None
            self._stop_waiting()
            if isinstance(answer, Exception):
                answer.answered = True       # the server said so: nothing half-done
                d.errback(answer)
            else:
                d.callback(answer)

    def doWrite(self):
        self._write()

    def connectionLost(self, reason):
        self._fail(Failure(self._lost()))

    # -- internals ---------------------------------------------------------------------------
    def _closed_by_peer(self):
        """Whether the server has closed the connection (its end is already in the
        socket, not seen by the reactor yet)."""
        try:
            return self._peek_closed(self.conn)
        except Exception:
            return True

    def _write(self):
        try:
            n = self._socket_send(self.conn, self._out)
        except BlockingIOError:
            n = 0
        except Exception:
            self._fail(Failure())
            return
        self._out = self._out[n:]
        if self._out and not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        elif not self._out and self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def _watch(self):
        # One timer per connection, not one per script (scheduling and cancelling a
        # DelayedCall for every barrier query cost more than the query's own parsing):
        # it fires at the oldest deadline it was set for and looks again from there.
        self._deadline = self.reactor.seconds() + self.timeout
        if self._timer is None:
            self._timer = self.reactor.callLater(self.timeout, self._check_deadline)

    def _check_deadline(self):
        self._timer = None
        if self._pending is None:
            return
        left = self._deadline - self.reactor.seconds()
        if left > 0:
            self._timer = self.reactor.callLater(left, self._check_deadline)
            return
        self._fail(Failure(self._lost("no answer in %.0fs" % self.timeout)))

    def _fail(self, failure):
        d, self._pending = self._pending, None
        self._drop()
        if d is not None:
            d.errback(failure)

    def _stop_waiting(self):
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def _drop(self):
        self._stop_waiting()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        self._out = b""
        conn, self.conn = self.conn, None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if conn is not None:
            self._close_conn(conn)
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(self._lost("connection dropped"))

    @staticmethod
    def _close_conn(conn):
        try:
            conn.close()
        except Exception:
            pass


class RevisionReader(object):
    """The read barrier's query (:mod:`.barrier`) on a connection of its own: the
    counter row, read without a pool thread.  ``read()`` fails at once while it is not
    connected (it connects in the background), so the barrier uses the pool then."""

    def __init__(self, connection):
        self.connection = connection
        self.queries = 0

    @property
    def connected(self):
        return self.connection.connected

    @property
    def on_connected(self):
        return self.connection.on_connected

    @on_connected.setter
    def on_connected(self, fn):
        self.connection.on_connected = fn

    def read(self):
        c = self.connection
        if not c.connected:
            c.connect().addErrback(lambda f: log.debug(
                "revision reader: cannot connect: {e}", e=f.getErrorMessage()))
            return defer.fail(NotConnected())
        self.queries += 1
        return c.script(SCRIPT, check_closed=False).addCallback(_revision_of)

    def close(self):
        self.connection.close()


class Constant(tuple):
    """A script of statements without parameters that is sent again and again: the
    dialects' ``_send`` encode it once (:meth:`encoded`)."""

    def encoded(self, encode):
        """``encode(self)``, computed once per ``encode`` (a dialect's encoder)."""
        key = (self, encode)
        out = _ENCODED.get(key)
        if out is None:
            out = _ENCODED[key] = encode(self)
        return out


_ENCODED = {}       # (Constant, encoder) -> its encoding


#: The query every revision reader sends.
QUERY = "SELECT revision, compact_revision FROM etcd_meta WHERE id = 1"
SCRIPT = Constant(((QUERY, None),))


def _revision_of(results):
    row = results[0][0]
    return int(row[0]), int(row[1])

"""The Twisted Protocol: a thin shell that picks HTTP/2 or HTTP/1.1 and feeds bytes.

One port, two faces, like etcd's cmux: a connection that opens with the HTTP/2 client
preface (h2c prior knowledge, what etcdctl and grpcio send to http:// endpoints) goes to
:class:`~etcdadapter.transport.h2_server.H2Server`; anything else is HTTP/1.1 for
twisted.web.  With TLS the ALPN result decides the same way.

It also holds the connection's limits: the header/idle :class:`Deadlines` (started at
the TCP accept, so a TLS handshake counts), the :class:`OutputBudget` (on HTTP/2 it is the
transport's producer: reading stops while the socket holds more than the budget), and
the factory refuses connections beyond ``max_connections``.
"""

from functools import partial

from zope.interface import implementer
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger

from etcdadapter.logs import address_text
from etcdadapter.security.peer import peer_identity
from etcdadapter.transport import deadlines as phases
from etcdadapter.transport.deadlines import Deadlines
from etcdadapter.transport.h2_server import H2Server, H2Settings
from etcdadapter.transport.http1 import make_site
from etcdadapter.transport.limits import ConnectionLimits, ConnectionStats, LogThrottle
from etcdadapter.transport.output_budget import OutputBudget, send_now, unsent_bytes

log = Logger()

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LOG_INTERVAL = 10.0     # refusals and timeouts: at most one log line per this
ABORT_AFTER = 15.0      # a closing connection whose client takes no bytes (twisted.web's)
# HTTP/2 bytes one connection gets handled per reactor turn; the rest of a read waits a
# turn (reading paused), so a client sending many small frames (a stream or PING flood:
# some 1,000 frames a 64 KiB read, up to 0.2 ms each) cannot hold the others up long.
H2_SLICE = 16384


class _Discard(object):
    @staticmethod
    def dataReceived(data):
        pass

    @staticmethod
    def connectionLost(reason):
        pass


class _Refused(protocol.Protocol):
    """A connection over ``max_connections``: closed at once."""

    def connectionMade(self):
        self.transport.abortConnection()


@implementer(interfaces.IPushProducer)
class EtcdProtocol(protocol.Protocol):
    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self._buffer = b""
        self._inner = None       # H2Server, or twisted.web's HTTPChannel
        self._h2 = None
        self._closed = None      # Deferred fired by connectionLost (HTTP/1.1 drain)
        self._reading_paused = False     # HTTP/2: the socket is full (see dataReceived)
        self._backlog = b""              # HTTP/2 bytes read, to be handled next turns
        self._backlog_call = None
        self._transport_paused = False
        self._abort_call = None
        limits = factory.limits
        self.deadlines = Deadlines(factory.clock, limits.header_timeout,
                                   limits.idle_timeout, self._timed_out)
        self.budget = OutputBudget(limits.output_budget, self._unsent)

    def _unsent(self):
        return unsent_bytes(self.transport)

    def connectionMade(self):
        self.factory.connections.add(self)
        self.factory.stats.accepted += 1
        self.deadlines.head()
        # Small gRPC frames must not wait for Nagle + delayed ACK (40 ms stalls).
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass

    def dataReceived(self, data):
        if self._inner is not None:
            if self._h2 is None:
                self._inner.dataReceived(data)
            else:
                self._h2_received(data)
            return
        self._buffer += data
        n = min(len(self._buffer), len(H2_PREFACE))
        if self._buffer[:n] != H2_PREFACE[:n]:
            if not self._buffer[:1].isupper():
                # Neither HTTP/2 nor an HTTP/1.x request line (a method is an upper-case
                # token): like etcd's cmux, which matches nothing, just hang up.
                self.transport.loseConnection()
                self._inner = _Discard
                return
            self._start_http1()
        elif n == len(H2_PREFACE):
            self._start_h2()

    def _h2_received(self, data):
        if self._backlog:
            self._backlog += data       # (a TLS layer may still deliver while paused)
            return
        if len(data) > H2_SLICE:
            data, self._backlog = data[:H2_SLICE], data[H2_SLICE:]
            self._backlog_call = self.factory.clock.callLater(0, self._h2_backlog)
        self._h2.data_received(data)
        if not self._reading_paused and self.budget.socket_over():
            # The client does not read: stop reading its requests until the socket
            # drains (resumeProducing).
            self._reading_paused = True
        self._update_reading()

    def _h2_backlog(self):
        self._backlog_call = None
        data, self._backlog = self._backlog, b""
        if data and self._h2 is not None:
            self._h2_received(data)

    def _update_reading(self):
        paused = self._reading_paused or bool(self._backlog)
        if paused != self._transport_paused:
            self._transport_paused = paused
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _start_h2(self):
        f = self.factory
        transport = self.transport
        self._h2 = H2Server(partial(send_now, transport), self._close, f.registry, f.router,
                            f.clock, settings=f.h2_settings, peer=self.addr,
                            peer_identity=peer_identity(transport), budget=self.budget,
                            deadlines=self.deadlines, stats=f.stats)
        self._inner = self._h2
        transport.registerProducer(self, True)
        self._h2.initiate()
        data, self._buffer = self._buffer, b""
        self._h2_received(data)

    def _start_http1(self):
        channel = self.factory.site.buildProtocol(self.addr)
        channel.deadlines = self.deadlines
        channel.budget = self.budget
        channel.stats = self.factory.stats
        self._inner = channel
        channel.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        channel.dataReceived(data)

    # -- IPushProducer (HTTP/2; twisted.web's channel is the producer for HTTP/1.1) -----
    def pauseProducing(self):
        pass        # the write buffer passed 64 KiB; dataReceived checks the budget

    def resumeProducing(self):
        # The write buffer is empty.
        if self._reading_paused:
            self._reading_paused = False
            self._update_reading()
        if self._h2 is not None:
            self._h2.output_drained()

    def stopProducing(self):
        pass

    # -- limits ---------------------------------------------------------------------
    def _timed_out(self, phase):
        f = self.factory
        f.stats.timed_out[phase] += 1
        if phase == phases.IDLE:
            log.debug("closing idle connection from {peer}", peer=address_text(self.addr))
        else:
            n = f.timeout_log.due()
            if n:
                log.info("closed {n} connection(s) that sent no complete request in "
                         "--header-timeout {t}s (latest from {peer}, {phase} timeout)",
                         n=n, t=f.limits.header_timeout, peer=address_text(self.addr),
                         phase=phase)
        if phase != phases.IDLE:
            self.transport.abortConnection()
        elif self._h2 is not None:
            self._h2.close_idle()
        else:
            self._close()

    def _close(self):
        """Close after the unsent bytes are out; abort if the client does not take them
        within ABORT_AFTER seconds."""
        if self._abort_call is not None:
            return
        self._abort_call = self.factory.clock.callLater(ABORT_AFTER, self._abort)
        # A registered producer keeps Twisted from closing after the last byte is out
        # (it is asked to resume instead), so it goes first.
        if self._h2 is None and self._inner is not None and self._inner is not _Discard:
            self._inner.loseConnection()      # twisted.web's: unregisters its producer
        else:
            if self._h2 is not None:
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _abort(self):
        self._abort_call = None
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
        self.deadlines.stop()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._backlog_call is not None and self._backlog_call.active():
            self._backlog_call.cancel()
        self._backlog_call = None
        self._backlog = b""
        if self._h2 is not None:
            self._h2.connection_lost()
        elif self._inner is not None:
            self._inner.connectionLost(reason)
        closed, self._closed = self._closed, None
        if closed is not None:
            closed.callback(None)

    def shutdown(self):
        """GOAWAY / close after in-flight requests; Deferred fires when done."""
        if self._h2 is not None:
            return self._h2.shutdown()
        # Fired by connectionLost: only then has everything written reached the socket
        # (the reactor's own shutdown would drop what is still buffered).
        if self._closed is None:
            self._closed = defer.Deferred()
        if getattr(self._inner, "requests", None):
            # HTTP/1.1 with a request in flight: answer it, then close (twisted.web
            # closes a non-persistent channel when its last request is done).
            self._inner.persistent = False
        else:
            self.transport.loseConnection()
        return self._closed


class EtcdFactory(protocol.Factory):
    noisy = False

    def __init__(self, registry, router, clock=None, h2_settings=None, limits=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.registry = registry
        self.router = router
        self.clock = clock
        self.h2_settings = h2_settings or H2Settings()
        self.limits = limits or ConnectionLimits()
        self.stats = ConnectionStats()
        self.site = make_site(router)
        self.connections = set()
        self.refusal_log = LogThrottle(self.clock, LOG_INTERVAL)
        self.timeout_log = LogThrottle(self.clock, LOG_INTERVAL)

    def buildProtocol(self, addr):
        limit = self.limits.max_connections
        if limit and len(self.connections) >= limit:
            self.stats.refused += 1
            n = self.refusal_log.due()
            if n:
                log.warn("refused {n} connection(s) (latest from {peer}): "
                         "--max-connections {limit} reached", n=n, peer=address_text(addr),
                         limit=limit)
            return _Refused()
        return EtcdProtocol(self, addr)

    def shutdown(self, timeout=10.0):
        """Drain every connection; give up (close hard) after ``timeout`` seconds.
        Deferred firing with the number of connections that had to be cut."""
        conns = list(self.connections)
        if not conns:
            return defer.succeed(0)
        d = defer.DeferredList([c.shutdown() for c in conns], consumeErrors=True)
        cut = []
        timer = self.clock.callLater(timeout, self._abort_all, cut)

        def done(result):
            if timer.active():
                timer.cancel()
            return len(cut)
        return d.addBoth(done)

    def _abort_all(self, cut):
        for c in list(self.connections):
            cut.append(c)
            c.transport.abortConnection()

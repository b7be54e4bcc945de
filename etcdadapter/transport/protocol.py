"""The Twisted Protocol: a thin shell that picks HTTP/2 or HTTP/1.1 and feeds bytes.

One port, two faces, like etcd's cmux: a connection that opens with the HTTP/2 client
preface (h2c prior knowledge, what etcdctl and grpcio send to http:// endpoints) goes to
:class:`~etcdadapter.transport.h2_server.H2Server`; anything else is HTTP/1.1 for
twisted.web.  With TLS the ALPN result decides the same way.
"""

from twisted.internet import defer, protocol
from twisted.logger import Logger

from etcdadapter.security.peer import peer_identity
from etcdadapter.transport.h2_server import H2Server, H2Settings
from etcdadapter.transport.http1 import make_site

log = Logger()

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Discard(object):
    @staticmethod
    def dataReceived(data):
        pass

    @staticmethod
    def connectionLost(reason):
        pass


class EtcdProtocol(protocol.Protocol):
    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self._buffer = b""
        self._inner = None       # H2Server, or twisted.web's HTTPChannel
        self._h2 = None
        self._closed = None      # Deferred fired by connectionLost (HTTP/1.1 drain)

    def connectionMade(self):
        self.factory.connections.add(self)
        # Small gRPC frames must not wait for Nagle + delayed ACK (40 ms stalls).
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass

    def dataReceived(self, data):
        if self._inner is not None:
            self._inner.dataReceived(data) if self._h2 is None \
                else self._h2.data_received(data)
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

    def _start_h2(self):
        f = self.factory
        transport = self.transport
        self._h2 = H2Server(transport.write, transport.loseConnection, f.registry, f.router,
                            f.clock, settings=f.h2_settings, peer=self.addr,
                            peer_identity=peer_identity(transport))
        self._inner = self._h2
        self._h2.initiate()
        data, self._buffer = self._buffer, b""
        self._h2.data_received(data)

    def _start_http1(self):
        channel = self.factory.site.buildProtocol(self.addr)
        self._inner = channel
        channel.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        channel.dataReceived(data)

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
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

    def __init__(self, registry, router, clock=None, h2_settings=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.registry = registry
        self.router = router
        self.clock = clock
        self.h2_settings = h2_settings or H2Settings()
        self.site = make_site(router)
        self.connections = set()

    def buildProtocol(self, addr):
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

"""Draining on stop, as a child of the adapter's service tree (:mod:`etcdadapter.server`)
that sits between the listeners and what they use: it stops after the listeners stopped
listening and before the compactor, lease expiry, auth and the store stop.

End every watch and keep-alive stream at once with Unavailable "etcdserver: server
stopped" (clients resume on another adapter); GOAWAY / Connection: close so that unary
calls in flight finish and nothing new starts; after ``timeout`` seconds cut what is
left.
"""

import time

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter.errors import ErrStopped

# The adapter's events (draining, drained) keep the namespace log filters know them by.
log = Logger(namespace="etcdadapter.server")


class Drain(service.Service):
    """``factory``: the client connections' EtcdFactory; ``open_streams``: the
    OpenStreams the methods are tracked by."""

    def __init__(self, factory, open_streams, timeout):
        self.setName("drain")
        self.factory = factory
        self.open_streams = open_streams
        self.timeout = timeout

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        t0 = time.monotonic()
        connections = len(self.factory.connections)
        streams = self.open_streams.end_all(ErrStopped())
        log.info("etcd-adapter draining: {streams} streams ended, {connections} "
                 "connections to close (at most {timeout}s)", event="draining",
                 streams=streams, connections=connections, timeout=self.timeout)
        cut = yield self.factory.shutdown(self.timeout)
        log.info("etcd-adapter drained in {seconds:.3f}s", event="drained",
                 seconds=round(time.monotonic() - t0, 6), connections_cut=cut or 0)

"""Services that start one after another and stop in reverse order, each waiting for the
one before: the adapter is such a tree (store, lease expiry, auth refresh, compactor,
drain, listeners, metrics port; see :mod:`etcdadapter.server`).

Twisted's ``MultiService`` starts its children at once and stops them all together; the
adapter's children depend on each other (nothing listens before the store is up, the
store closes only once connections are drained), so here each child's start or stop --
a Deferred or not -- completes before the next one begins.
"""

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

log = Logger()


class InOrder(service.MultiService):
    """A ``MultiService`` whose children start in the order added and stop in reverse.

    A child that fails to start fails the parent's start; the children after it are not
    started.  Stopping stops every child that was started (the failed one too: it may
    hold part of what it opened); a child that fails to stop stops the rest from being
    stopped, and the parent's stop fails with it."""

    def startService(self):
        service.Service.startService(self)
        return self._start_children()

    @defer.inlineCallbacks
    def _start_children(self):
        for child in list(self):
            if not self.running:        # stopped while starting: start nothing more
                return
            yield defer.maybeDeferred(child.startService)

    def stopService(self):
        service.Service.stopService(self)
        return self._stop_children()

    @defer.inlineCallbacks
    def _stop_children(self):
        for child in reversed(list(self)):
            if child.running:
                yield defer.maybeDeferred(child.stopService)


class Hooks(service.Service):
    """A child made of two callables: ``start()`` and ``stop()``, each may return a
    Deferred (the store, lease expiry, auth refresh, the compactor)."""

    def __init__(self, name, start, stop):
        self.setName(name)
        self._start, self._stop = start, stop

    def startService(self):
        service.Service.startService(self)
        return self._start()

    def stopService(self):
        service.Service.stopService(self)
        return self._stop()


class Listening(service.Service):
    """Listens with ``factory()`` on each Twisted endpoint description while running.

    ``endpoint(description)``: the endpoint string actually listened on (e.g. with a
    backlog); ``announce(description, port)``: logs each listener.  :attr:`ports`: the
    listening ports, in order (empty when stopped)."""

    def __init__(self, name, reactor, descriptions, factory, announce,
                 endpoint=lambda description: description):
        self.setName(name)
        self.reactor = reactor
        self.descriptions = descriptions
        self.factory = factory
        self.announce = announce
        self.endpoint = endpoint
        self.ports = []

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        factory = self.factory()
        for description in self.descriptions:
            ep = endpoints.serverFromString(self.reactor, self.endpoint(description))
            port = yield ep.listen(factory)
            self.ports.append(port)
            self.announce(description, port)

    def stopService(self):
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])

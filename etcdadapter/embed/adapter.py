"""An adapter server inside the host program: :class:`EmbeddedAdapter` wraps the very
:class:`~etcdadapter.server.AdapterService` ``twistd etcd-adapter`` runs, on the host's
Twisted reactor or asyncio loop.
"""

import asyncio
import sys
from typing import Awaitable, List, NamedTuple, Optional, Sequence, Union

from twisted.internet import defer

from etcdadapter.embed.client import Client
from etcdadapter.embed.futures import Futures
from etcdadapter.security.peer import PeerIdentity
from etcdadapter.server import AdapterConfig, AdapterService
from etcdadapter.store.base import Store


class Address(NamedTuple):
    """A bound TCP address of the adapter."""

    host: str
    port: int


def use_asyncio_reactor(loop=None):
    """Make Twisted run on the asyncio event loop ``loop`` (default: the running one) and
    return that reactor.

    Installs Twisted's asyncio reactor on ``loop`` unless one is installed already, and
    marks it running (the loop runs it; nobody calls ``reactor.run()``).  Call it -- or
    create the :class:`EmbeddedAdapter` with ``loop=`` -- before anything imports
    ``twisted.internet.reactor`` (importing :mod:`etcdadapter` does not); otherwise
    Twisted's default reactor is installed and this raises RuntimeError."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor
        asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    # _asyncioEventloop: the loop the reactor wraps (no public accessor).
    if not isinstance(reactor, AsyncioSelectorReactor) or \
            getattr(reactor, "_asyncioEventloop", None) is not loop:
        raise RuntimeError(
            "Twisted's reactor (%s) was installed before and does not run on this asyncio "
            "loop: create the EmbeddedAdapter (or call use_asyncio_reactor) before "
            "anything imports twisted.internet.reactor" % type(reactor).__name__)
    if not reactor.running and not getattr(reactor, "_started", False):
        if loop.is_running():
            reactor.startRunning(installSignalHandlers=False)
        else:
            loop.call_soon(_start_running, reactor)
    return reactor


def _start_running(reactor):
    if not reactor.running and not getattr(reactor, "_started", False):
        reactor.startRunning(installSignalHandlers=False)


def _executor_thread(loop):
    """run_in_thread for the adapter's password hashing on an asyncio host: the loop's
    default executor, which ``asyncio.run`` shuts down (the reactor's own thread pool
    would keep the process from exiting)."""
    def run_in_thread(fn, *args):
        return defer.Deferred.fromFuture(loop.run_in_executor(None, fn, *args))
    return run_in_thread


class EmbeddedAdapter(object):
    """An etcd v3 server (gRPC and the HTTP/JSON API on every ``listen`` endpoint) in
    this process, plus in-process clients for the host program.

    ``store``: a store URL (``"memory://"``, ``"sqlite:///path"``, ``"mysql://..."``,
    ``"postgresql://..."``: see the README's options) or a
    :class:`~etcdadapter.store.base.Store` object, not started: the adapter starts and
    stops it.  ``listen``: Twisted server endpoint strings, e.g.
    ``"tcp:2379:interface=127.0.0.1"``; port 0 picks a free port (see
    :attr:`addresses`).  Other keyword arguments are the daemon's options, as declared
    in :mod:`etcdadapter.options` with underscores for dashes
    (:class:`~etcdadapter.server.AdapterConfig`: ``max_txn_ops``, ``cert_file``,
    ``client_cert_policy``, ``drain_timeout``, ...), values already checked (seconds as
    numbers).

    Under Twisted (``loop`` None) it runs on ``reactor`` (default: the global one) and
    every method returns a Deferred.  Under asyncio pass the running ``loop``: Twisted's
    asyncio reactor is installed on it (see :func:`use_asyncio_reactor`) and every
    method returns an awaitable future.  Use it from the reactor's (the loop's) thread.
    """

    def __init__(self, store: Union[str, Store] = "memory://",
                 listen: Sequence[str] = ("tcp:2379:interface=127.0.0.1",), *,
                 reactor=None, loop: Optional[asyncio.AbstractEventLoop] = None,
                 **options):
        run_in_thread = None
        if loop is not None:
            if reactor is not None:
                raise ValueError("give reactor (Twisted) or loop (asyncio), not both")
            reactor = use_asyncio_reactor(loop)
            run_in_thread = _executor_thread(loop)
        elif reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        #: How results reach the host (Deferreds or asyncio futures).
        self.futures = Futures(loop)
        url = store if isinstance(store, str) else repr(store)
        config = AdapterConfig(listen=listen, store=url, **options)
        #: The :class:`~etcdadapter.server.AdapterService` doing the work.
        self.service = AdapterService(
            config, store=None if isinstance(store, str) else store, reactor=reactor,
            run_in_thread=run_in_thread)
        self.service.exit_on_start_failure = False
        self._watches = set()           # open in-process watches, ended by stop()
        #: True between a successful start() and stop(): clients may call.
        self.running = False

    @property
    def store(self):
        """The :class:`~etcdadapter.store.base.Store` the adapter serves."""
        return self.service.store

    @property
    def addresses(self) -> List[Address]:
        """The bound TCP addresses, one per TCP listener (in ``listen`` order), once
        started."""
        out = []
        for port in self.service.ports:
            host = port.getHost()
            if hasattr(host, "port"):
                out.append(Address(host.host, host.port))
        return out

    @property
    def port(self) -> Optional[int]:
        """The first listener's TCP port, once started (None before)."""
        addresses = self.addresses
        return addresses[0].port if addresses else None

    @property
    def client_urls(self) -> List[str]:
        """The client URLs (``http://127.0.0.1:2379``, ...) as ``member list`` reports
        them: ``advertise_client_urls`` if given, else the bound addresses."""
        return list(self.service.identity.client_urls)

    def start(self) -> Awaitable["EmbeddedAdapter"]:
        """Open the store and listen -> fires with the adapter once it serves.  On
        failure (a port in use, a store that cannot be opened) everything started is
        closed again and the error is raised."""
        if self.running or self.service.running:
            raise RuntimeError("the adapter is already started")
        d = defer.maybeDeferred(self.service.startService)

        def started(_):
            self.running = True
            return self

        def failed(failure):
            undo = defer.maybeDeferred(self.service.stopService)
            undo.addErrback(lambda _f: None)
            return undo.addCallback(lambda _: failure)
        return self.futures.out(d.addCallbacks(started, failed))

    def stop(self) -> Awaitable[None]:
        """Stop serving: in-process watches end (``done`` fires with None), listeners
        close, remote connections drain (up to ``drain_timeout`` seconds), the store
        closes."""
        self.running = False
        for w in list(self._watches):
            w.cancel()
        if not self.service.running:
            return self.futures.out(defer.succeed(None))
        return self.futures.out(defer.maybeDeferred(self.service.stopService))

    def client(self, *, user: Optional[str] = None, password: Optional[str] = None,
               token: Optional[str] = None,
               identity: Optional[PeerIdentity] = None) -> Client:
        """An in-process :class:`~etcdadapter.embed.client.Client` with these
        credentials (none: an anonymous caller, allowed everything unless etcd auth or
        a client-certificate policy is on)."""
        return Client(self, token=token, user=user, password=password,
                      identity=identity)

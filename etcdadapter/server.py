"""Assemble one adapter: store + services + both faces on the listening endpoints.

This is what ``twistd etcd-adapter`` runs (via :mod:`etcdadapter.tap`) and what a host
program embeds.  It is a twisted.application service -- a tree of them, see
:class:`AdapterService` -- start it, stop it (stopping drains connections: GOAWAY,
in-flight calls finish, then the store closes).
"""

import inspect
import socket

from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter import (__version__, metrics_port, options, service_tree, startup_errors,
                         store_start)
from etcdadapter.drain import Drain
from etcdadapter.gateway import endpoints as http_endpoints
from etcdadapter.gateway import rpc_routes
from etcdadapter.gateway.router import HttpRouter
from etcdadapter.health import HealthCheck
from etcdadapter.logs import address_text
from etcdadapter.metrics import AdapterMetrics
from etcdadapter.sd_notify import notify as sd_notify
from etcdadapter.security.auth_store import AuthStore
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.security.cert_policy import CertPolicy, PolicyError
from etcdadapter.services.auth import AuthService
from etcdadapter.services.cluster import ClusterService
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.kv import KVLimits, KVService
from etcdadapter.services.lease import LeaseService
from etcdadapter.services.maintenance import MaintenanceService
from etcdadapter.services.open_streams import OpenStreams
from etcdadapter.services.rpc import MethodRegistry
from etcdadapter.services.watch import WatchService
from etcdadapter.services.watch_hub import WatchHub
from etcdadapter.slow_requests import SlowRequests
from etcdadapter.store import compactor
from etcdadapter.transport.h2_server import H2Settings
from etcdadapter.store.urls import redact
from etcdadapter.transport.limits import ConnectionLimits, default_max_connections
from etcdadapter.transport.protocol import EtcdFactory

log = Logger()

GRPC_RECEIVE_SLACK = 512 * 1024   # etcd: gRPC max receive = max-request-bytes + 512 KiB


# Twisted listens with a backlog of 50; after a restart every APISIX worker of a fleet
# reconnects at once and a full accept queue drops SYNs (clients stall 1 s, 3 s, ...).
# Go (so etcd) asks for the kernel maximum; so do we, unless the endpoint says otherwise.
LISTEN_BACKLOG = 4096


def with_backlog(description):
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return description + ":backlog=%d" % LISTEN_BACKLOG
    return description


def _exit_after_shutdown(code):
    import os
    os._exit(code)


class AdapterConfig(object):
    """The service's settings: one attribute per option of :mod:`etcdadapter.options`
    that is not the command's own (the long name with underscores; ``metrics_listen``
    for ``--listen-metrics-urls``), given as keywords; what is not given has the
    option's default.  Values are taken as they are, already checked: seconds as
    numbers, lists as lists.  ``auto_compaction_retention``: text as the flag takes it
    ("1h", "30m", "0", "1000"; see :func:`etcdadapter.store.compactor.parse_retention`);
    ``auto_compaction_check_interval``: seconds, None for etcd's.  ``max_connections``
    None: from the open-file limit (see transport/limits.py); 0: no limit.  A timeout
    of 0 turns it off."""

    def __init__(self, **settings):
        for option in options.SETTINGS:
            value = settings.pop(option.attribute, option.initial)
            if option.kind in (options.LIST, options.COMMA_LIST):
                value = list(value)
            setattr(self, option.attribute, value)
        if settings:
            raise TypeError("AdapterConfig() got unexpected keyword argument(s): %s"
                            % ", ".join(sorted(settings)))


# help(AdapterConfig) and editors show the keywords and their defaults.
AdapterConfig.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] +
    [inspect.Parameter(o.attribute, inspect.Parameter.KEYWORD_ONLY, default=o.initial)
     for o in options.SETTINGS])


class AdapterService(service_tree.InOrder):
    """The adapter as a tree of services that start in this order and stop in reverse,
    each waiting for the one before (:class:`etcdadapter.service_tree.InOrder`):

    ``signal-stop`` (the daemon only, see :mod:`etcdadapter.signal_stop`), ``store``
    (started with retries for ``store_start_timeout``, see store_start; closed last),
    ``auth`` (its refresh), ``lease-expiry``, ``compactor``, ``drain`` (on stop: see
    :mod:`etcdadapter.drain`), ``listeners`` (the client endpoints) and ``metrics-port``.
    Once all started it is ready (logged, systemd told); stopping drains: the listeners
    stop listening, streams end, in-flight calls finish (GOAWAY), then the store closes.
    """

    #: A failed start stops the reactor and exits the process non-zero (twistd); an
    #: embedding host sets this False and gets the failure from ``started`` instead.
    exit_on_start_failure = True

    def __init__(self, config, store=None, reactor=None, tls=None, cert_policy=None,
                 notify_systemd=False, run_in_thread=None, handle_signals=False):
        """``store``, ``tls`` (ServerTLS) and ``cert_policy`` (CertPolicy): already
        opened/loaded from the config (by the twistd options); made here when None.
        ``notify_systemd``: tell systemd when serving and when stopping (Type=notify;
        the twistd daemon does, an embedding program does its own).
        ``run_in_thread(fn, *args) -> Deferred`` runs the password KDF (default: the
        reactor's thread pool).  ``handle_signals``: SIGTERM/SIGINT stop the process,
        which exits 0 once drained (the daemon; see signal_stop)."""
        service_tree.InOrder.__init__(self)
        self.notify_systemd = notify_systemd
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        if store is None:
            from etcdadapter.store.urls import open_store
            store = open_store(config.store, reactor=reactor)
        self.store = store
        self._etcd_services(cert_policy, run_in_thread)
        self._faces(tls)
        self._children(handle_signals)

    def _etcd_services(self, cert_policy, run_in_thread):
        """The etcd services over the store: KV, Watch, Lease, Auth, Maintenance,
        Cluster, and the compactor."""
        store, reactor, config = self.store, self.reactor, self.config
        self.identity = ServerIdentity(name=config.name,
                                       client_urls=config.advertise_client_urls)
        self.compactor = compactor.Compactor(
            store, config.auto_compaction_mode,
            compactor.parse_retention(config.auto_compaction_mode,
                                      config.auto_compaction_retention),
            clock=reactor, check_interval=config.auto_compaction_check_interval)
        if run_in_thread is None:
            from twisted.internet import threads

            def run_in_thread(fn, *args):
                return threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                                 fn, *args)
        self.auth = AuthStore(store, clock=reactor, token_ttl=config.auth_token_ttl,
                              run_in_thread=run_in_thread)
        if cert_policy is None and config.client_cert_policy:
            cert_policy = CertPolicy.load(config.client_cert_policy)
        self.authz = Authorizer(cert_policy, auth=self.auth,
                                cert_users=config.client_cert_auth)
        self.registry = MethodRegistry()
        self.router = HttpRouter()
        self.kv = KVService(store, self.identity,
                            KVLimits(config.max_request_bytes, config.max_txn_ops),
                            authz=self.authz)
        self.maintenance = MaintenanceService(store, self.identity, authz=self.authz)
        self.cluster = ClusterService(self.identity)
        self.watch_hub = WatchHub(store, self.identity, clock=reactor)
        self.watch = WatchService(self.watch_hub, store, self.identity,
                                  max_request_bytes=config.max_request_bytes,
                                  progress_interval=config.watch_progress_notify_interval,
                                  authz=self.authz.for_watch())
        self.lease = LeaseService(store, self.identity, clock=reactor,
                                  authz=self.authz.for_lease())
        self.auth_service = AuthService(self.auth, self.authz, store, self.identity)

    def _faces(self, tls):
        """The services' methods in one registry, served by one factory as gRPC and
        HTTP/JSON (with TLS when configured), the metrics, and the metrics port's
        factory."""
        store, reactor, config = self.store, self.reactor, self.config
        max_connections = config.max_connections
        if max_connections is None:
            max_connections = default_max_connections()
        self.limits = ConnectionLimits(header_timeout=config.header_timeout,
                                       idle_timeout=config.idle_timeout,
                                       max_connections=max_connections)
        self.metrics = AdapterMetrics(store, self.watch)
        self.open_streams = OpenStreams()
        # Around every call, whichever face carries it (services/rpc.py: Interceptor).
        self.registry.intercept(self.metrics.calls,
                                SlowRequests(config.slow_request_threshold),
                                self.open_streams)
        for svc in (self.kv, self.maintenance, self.cluster, self.watch, self.lease,
                    self.auth_service):
            for method in svc.methods():
                self.registry.add(method)
        max_receive = config.max_request_bytes + GRPC_RECEIVE_SLACK
        self.health = HealthCheck(store, reactor)
        http_endpoints.install(self.router, self.health)
        rpc_routes.install(self.router, self.registry, max_receive)
        self.metrics.install(self.router)
        # JSON carries bytes as base64 (4/3) plus field names: twice the message is ample.
        self.router.max_body_bytes = 2 * max_receive + 65536
        self.factory = EtcdFactory(
            self.registry, self.router, clock=reactor,
            h2_settings=H2Settings(
                max_concurrent_streams=config.max_concurrent_streams,
                max_receive_message_size=max_receive),
            limits=self.limits)
        self.metrics.watch_connections(self.factory)
        if tls is None and (config.cert_file or config.key_file):
            from etcdadapter.security.tls import ServerTLS
            tls = ServerTLS(config.cert_file, config.key_file, config.trusted_ca_file,
                            config.client_cert_auth)
        self.tls = tls
        if tls is not None:
            self.metrics.watch_tls(tls)
        self.metrics_factory = metrics_port.factory(self.metrics, self.health, reactor)

    def _children(self, handle_signals):
        if handle_signals:
            from etcdadapter.signal_stop import SignalStop
            self.addService(SignalStop(self.reactor))
        self.addService(service_tree.Hooks(
            "store", lambda: store_start.start_store(
                self.store, self.config.store_start_timeout, self.reactor),
            self.store.stop))
        self.addService(service_tree.Hooks("auth", self.auth.start, self.auth.stop))
        self.addService(service_tree.Hooks("lease-expiry", self.lease.start,
                                           self.lease.stop))
        self.addService(service_tree.Hooks("compactor", self.compactor.start,
                                           self.compactor.stop))
        self.addService(Drain(self.factory, self.open_streams, self.config.drain_timeout))
        self.listeners = service_tree.Listening(
            "listeners", self.reactor, self.config.listen, self._client_factory,
            self._listening, endpoint=with_backlog)
        self.listeners.setServiceParent(self)
        self.metrics_listeners = service_tree.Listening(
            "metrics-port", self.reactor, self.config.metrics_listen,
            lambda: self.metrics_factory, self._listening_metrics)
        self.metrics_listeners.setServiceParent(self)

    @property
    def ports(self):
        """The client listeners' ports, in ``listen`` order (empty when stopped)."""
        return self.listeners.ports

    @property
    def metrics_ports(self):
        return self.metrics_listeners.ports

    def _client_factory(self):
        return self.tls.wrap(self.factory, self.reactor) if self.tls else self.factory

    def _listening(self, description, port):
        log.info("etcd-adapter listening on {listen} ({address})", event="listening",
                 listen=description, address=address_text(port.getHost()),
                 tls=self.tls is not None)

    def _listening_metrics(self, description, port):
        log.info("etcd-adapter serving /metrics and /health on {address} (plain HTTP)",
                 event="listening-metrics", listen=description,
                 address=address_text(port.getHost()))

    def _ready(self, _):
        if not self.running:        # stopped while starting
            return
        if not self.identity.client_urls:
            self.identity.client_urls = [u for u in map(self._url, self.ports) if u]
        log.info("etcd-adapter ready: store {store}, revision {revision}, member "
                 "{member_id}", event="ready", store=redact(self.config.store),
                 version=__version__,
                 revision=self.store.revision,
                 compact_revision=self.store.compact_revision,
                 member_id="%x" % self.identity.member_id, name=self.identity.name,
                 client_urls=list(self.identity.client_urls))
        if self.notify_systemd:
            sd_notify("READY=1", "STATUS=serving %s on %s" % (
                redact(self.config.store), ", ".join(self.identity.client_urls)))

    def _url(self, port):
        host = port.getHost()
        if not hasattr(host, "port"):
            return "unix://%s" % (getattr(host, "name", "") or "",)
        addr = host.host
        if addr in ("0.0.0.0", "::", ""):
            addr = socket.getfqdn()
        if ":" in addr:
            addr = "[%s]" % addr
        return "%s://%s:%d" % ("https" if self.tls else "http", addr, host.port)

    def reload_tls(self):
        """Re-read the certificate files and the client-certificate policy (SIGHUP);
        open connections are kept.  A file that does not load keeps the old state."""
        ok = self.tls.reload() if self.tls is not None else False
        path = self.config.client_cert_policy
        if path:
            try:
                self.authz.cert_policy = CertPolicy.load(path)
                log.info("client certificate policy reloaded from {path}", path=path)
            except PolicyError as e:
                log.error("policy reload failed, keeping the previous policy: {error}",
                          error=str(e))
                ok = False
        return ok

    def _install_sighup(self):
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return      # embedded off the main thread: the host program reloads
        try:
            signal.signal(signal.SIGHUP,
                          lambda *_: self.reactor.callFromThread(self.reload_tls))
        except (ValueError, OSError, AttributeError):
            pass

    def startService(self):
        if self.tls is not None or self.config.client_cert_policy:
            self._install_sighup()
        self.started = service_tree.InOrder.startService(self)
        self.started.addCallback(self._ready)
        if self.exit_on_start_failure:
            self.started.addErrback(self._start_failed)
        return self.started

    def _start_failed(self, failure):
        # Exit non-zero (so systemd's Restart=on-failure and supervisors notice) instead
        # of idling without a listener.
        line = startup_errors.one_line(failure.value)
        if line is None:
            log.failure("etcd-adapter failed to start", failure)
        else:
            log.error("etcd-adapter failed to start: {error}", event="start-failed",
                      error=line)
        self.exit_code = 1
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_after_shutdown, 1)

    @defer.inlineCallbacks
    def stopService(self):
        """Drain (see the class), then the store closes."""
        if self.notify_systemd:
            sd_notify("STOPPING=1", "STATUS=draining")
        yield service_tree.InOrder.stopService(self)
        log.info("etcd-adapter stopped", event="stopped")

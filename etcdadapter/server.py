"""Assemble one adapter: store + services + both faces on the listening endpoints.

This is what ``twistd etcd-adapter`` runs (via :mod:`etcdadapter.tap`) and what a host
program embeds.  It is a twisted.application service: start it, stop it (stopping drains
connections: GOAWAY, in-flight calls finish, then the store closes).
"""

import socket

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from etcdadapter.gateway import endpoints as http_endpoints
from etcdadapter.gateway import rpc_routes
from etcdadapter.gateway.router import HttpRouter
from etcdadapter.metrics import AdapterMetrics
from etcdadapter.security.auth_store import TOKEN_TTL, AuthStore
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.security.cert_policy import CertPolicy, PolicyError
from etcdadapter.services.auth import AuthService
from etcdadapter.services.cluster import ClusterService
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.kv import KVLimits, KVService
from etcdadapter.services.lease import LeaseService
from etcdadapter.services.maintenance import MaintenanceService
from etcdadapter.services.rpc import MethodRegistry
from etcdadapter.services.watch import WatchService
from etcdadapter.services.watch_hub import WatchHub
from etcdadapter.transport.h2_server import H2Settings
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
    def __init__(self, listen=("tcp:2379:interface=127.0.0.1",), store="memory://",
                 name="default", advertise_client_urls=(), max_request_bytes=1572864,
                 max_txn_ops=128, max_concurrent_streams=2 ** 32 - 1, drain_timeout=10.0,
                 watch_progress_notify_interval=600.0, cert_file=None, key_file=None,
                 trusted_ca_file=None, client_cert_auth=False, client_cert_policy=None,
                 auth_token_ttl=TOKEN_TTL, header_timeout=10.0, idle_timeout=300.0,
                 max_connections=None):
        """``max_connections`` None: from the open-file limit (see transport/limits.py);
        0: no limit.  A timeout of 0 turns it off."""
        self.listen = list(listen)
        self.store = store
        self.name = name
        self.advertise_client_urls = list(advertise_client_urls)
        self.max_request_bytes = max_request_bytes
        self.max_txn_ops = max_txn_ops
        self.max_concurrent_streams = max_concurrent_streams
        self.drain_timeout = drain_timeout
        self.watch_progress_notify_interval = watch_progress_notify_interval
        self.cert_file = cert_file
        self.key_file = key_file
        self.trusted_ca_file = trusted_ca_file
        self.client_cert_auth = client_cert_auth
        self.client_cert_policy = client_cert_policy
        self.auth_token_ttl = auth_token_ttl
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections


class AdapterService(service.Service):
    def __init__(self, config, store=None, reactor=None, tls=None, cert_policy=None):
        """``store``, ``tls`` (ServerTLS) and ``cert_policy`` (CertPolicy): already
        opened/loaded from the config (by the twistd options); made here when None."""
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        if store is None:
            from etcdadapter.store.urls import open_store
            store = open_store(config.store)
        self.store = store
        self.identity = ServerIdentity(name=config.name,
                                       client_urls=config.advertise_client_urls)
        self.auth = AuthStore(store, clock=reactor, token_ttl=config.auth_token_ttl)
        if cert_policy is None and config.client_cert_policy:
            cert_policy = CertPolicy.load(config.client_cert_policy)
        self.authz = Authorizer(cert_policy, auth=self.auth,
                                cert_users=config.client_cert_auth)
        self.registry = MethodRegistry()
        self.router = HttpRouter()
        self.kv = KVService(store, self.identity,
                            KVLimits(config.max_request_bytes, config.max_txn_ops),
                            authz=self.authz)
        self.maintenance = MaintenanceService(store, self.identity)
        self.cluster = ClusterService(self.identity)
        self.watch_hub = WatchHub(store, self.identity, clock=reactor)
        self.watch = WatchService(self.watch_hub, store, self.identity,
                                  max_request_bytes=config.max_request_bytes,
                                  progress_interval=config.watch_progress_notify_interval,
                                  authz=self.authz.for_watch())
        self.lease = LeaseService(store, self.identity, clock=reactor,
                                  authz=self.authz.for_lease())
        self.auth_service = AuthService(self.auth, self.authz, store, self.identity)
        max_connections = config.max_connections
        if max_connections is None:
            max_connections = default_max_connections()
        self.limits = ConnectionLimits(header_timeout=config.header_timeout,
                                       idle_timeout=config.idle_timeout,
                                       max_connections=max_connections)
        self.metrics = AdapterMetrics(store, self.watch)
        for svc in (self.kv, self.maintenance, self.cluster, self.watch, self.lease,
                    self.auth_service):
            for method in svc.methods():
                self.registry.add(self.metrics.instrument(method))
        max_receive = config.max_request_bytes + GRPC_RECEIVE_SLACK
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
        self.ports = []

    def health(self):
        """(healthy, reason) -- the store answers a status request."""
        return self.store.status().addCallback(lambda _: (True, ""))

    @defer.inlineCallbacks
    def _start(self):
        yield self.store.start()
        yield self.auth.start()
        self.lease.start()
        factory = self.tls.wrap(self.factory) if self.tls else self.factory
        for description in self.config.listen:
            ep = endpoints.serverFromString(self.reactor, with_backlog(description))
            port = yield ep.listen(factory)
            self.ports.append(port)
            log.info("etcd-adapter listening on {desc} ({addr})", desc=description,
                     addr=port.getHost())
        if not self.identity.client_urls:
            self.identity.client_urls = [u for u in map(self._url, self.ports) if u]
        log.info("etcd-adapter ready: store {store}, revision {rev}, member {member:x}",
                 store=self.config.store, rev=self.store.revision,
                 member=self.identity.member_id)

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
        service.Service.startService(self)
        if self.tls is not None or self.config.client_cert_policy:
            self._install_sighup()
        self.started = self._start()
        self.started.addErrback(self._start_failed)
        return self.started

    def _start_failed(self, failure):
        # Exit non-zero (so systemd's Restart=on-failure and supervisors notice) instead
        # of idling without a listener.
        log.failure("etcd-adapter failed to start", failure)
        self.exit_code = 1
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_after_shutdown, 1)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        yield defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])
        yield self.factory.shutdown(self.config.drain_timeout)
        yield self.lease.stop()
        self.auth.stop()
        yield self.store.stop()
        log.info("etcd-adapter stopped")

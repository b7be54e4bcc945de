"""Prometheus metrics, served at ``GET /metrics`` on the client port like etcd's (and on
the ``--listen-metrics-urls`` listeners, :mod:`etcdadapter.metrics_port`).

Names follow what etcd exports so existing dashboards and alerts keep working:
go-grpc-prometheus' ``grpc_server_*`` (every call, whichever face carried it -- both
dispatch to the same handlers), ``etcd_debugging_mvcc_*`` revisions and watchers,
``etcd_mvcc_db_total_size_in_bytes``, ``etcd_server_has_leader`` (0 while the store
cannot be reached) and ``etcd_server_version``; the process (``process_*``, as every
Prometheus client exports them).  Our own additions are prefixed ``etcd_adapter_``.
Each adapter has its own registry (several can run in one process, e.g. embedded or in
tests).
"""

import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter.errors import CODE_NAMES, EtcdError, StatusCode
from etcdadapter.logs import address_text
from etcdadapter.services.rpc import UNARY, Method

log = Logger()

SLOW_REQUEST = 1.0      # seconds; a unary call taking longer is logged (slow-request)


def _code_of(failure_or_none):
    if failure_or_none is None:
        return StatusCode.OK
    exc = getattr(failure_or_none, "value", failure_or_none)
    if isinstance(exc, EtcdError):
        return exc.code
    if isinstance(exc, defer.CancelledError):
        return StatusCode.CANCELLED
    return StatusCode.UNKNOWN


def _log_slow(method, request, context, elapsed, code):
    key = getattr(request, "key", None)
    log.warn("slow request: {method} took {duration:.3f}s ({code}, peer {peer})",
             event="slow-request", method=method.path, duration=round(elapsed, 6),
             code=CODE_NAMES.get(code, str(code)), peer=address_text(context.peer),
             transport=context.transport,
             key=key[:128] if isinstance(key, bytes) and key else None)


class _MethodMetrics(object):
    """The labelled children of one method, bound once (labels() costs a lock and a
    dict lookup per call otherwise)."""

    def __init__(self, metrics, method):
        service, _, name = method.path[1:].rpartition("/")
        self.labels = (method.kind, service, name)
        self.started = metrics.started.labels(*self.labels)
        if method.kind == UNARY:
            self.seconds = metrics.seconds.labels(*self.labels)
        else:
            self.open = metrics.open_streams.labels(*self.labels[1:])
        self._handled = metrics.handled
        self._by_code = {}

    def handled(self, code):
        child = self._by_code.get(code)
        if child is None:
            child = self._handled.labels(*self.labels, CODE_NAMES.get(code, str(code)))
            self._by_code[code] = child
        child.inc()


class AdapterMetrics(object):
    def __init__(self, store, watch_service=None, clock=time.monotonic,
                 slow_request=SLOW_REQUEST):
        self.store = store
        self.watch_service = watch_service
        self.clock = clock
        self.slow_request = slow_request
        r = self.registry = CollectorRegistry(auto_describe=True)
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total",
                               "RPCs started on the server (gRPC and JSON gateway).",
                               labels, registry=r)
        self.handled = Counter("grpc_server_handled_total",
                               "RPCs completed on the server, by status code.",
                               labels + ("grpc_code",), registry=r)
        self.seconds = Histogram("grpc_server_handling_seconds",
                                 "Time to answer a unary RPC.", labels, registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1,
                                          .25, .5, 1, 2.5, 5, 10))
        self.open_streams = Gauge("etcd_adapter_open_streams",
                                  "Streaming calls (Watch, LeaseKeepAlive) now open.",
                                  ("grpc_service", "grpc_method"), registry=r)
        Gauge("etcd_debugging_mvcc_current_revision", "The store's current revision.",
              registry=r).set_function(lambda: store.revision)
        Gauge("etcd_debugging_mvcc_compact_revision", "The revision compacted to.",
              registry=r).set_function(lambda: max(store.compact_revision, 0))
        Gauge("etcd_debugging_mvcc_watch_stream_total", "Open watch streams.",
              registry=r).set_function(self._watch_streams)
        Gauge("etcd_debugging_mvcc_watcher_total", "Watchers on open watch streams.",
              registry=r).set_function(self._watchers)
        # etcd's NoLeader alert: 0 while the store cannot be reached (requests then fail
        # with "etcdserver: no leader"); a store without the notion is always there.
        Gauge("etcd_server_has_leader", "1 while the store answers (no raft here: the "
              "store's availability is what a leader means to clients).",
              registry=r).set_function(lambda: 1 if getattr(store, "available", True)
                                       else 0)
        _version_gauges(r)
        ProcessCollector(registry=r)
        self.db_size = Gauge("etcd_mvcc_db_total_size_in_bytes",
                             "Store size as Maintenance.Status reports it.", registry=r)
        self.db_size_in_use = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                                    "Store size in use as Maintenance.Status reports it.",
                                    registry=r)

        if hasattr(store, "stats"):
            r.register(_StoreCollector(store))

    def watch_connections(self, factory):
        """Export the client port's connection counts (an EtcdFactory's)."""
        self.registry.register(_ConnectionCollector(factory))

    def watch_tls(self, tls):
        """Export the refused TLS handshakes of a ServerTLS."""
        self.registry.register(_TLSCollector(tls))

    def _watch_streams(self):
        return len(self.watch_service.streams) if self.watch_service else 0

    def _watchers(self):
        if not self.watch_service:
            return 0
        return sum(len(ws.watchers) for ws in self.watch_service.streams)

    # -- instrumentation ----------------------------------------------------------------
    def instrument(self, method):
        """The same method with its handler counted and timed."""
        m = _MethodMetrics(self, method)
        handler = method.handler
        clock = self.clock
        slow = self.slow_request
        if method.kind == UNARY:
            def unary(request, context):
                m.started.inc()
                t0 = clock()
                d = defer.maybeDeferred(handler, request, context)

                def done(result):
                    elapsed = clock() - t0
                    m.seconds.observe(elapsed)
                    code = _code_of(result if isinstance(result, Failure) else None)
                    m.handled(code)
                    if elapsed >= slow:
                        _log_slow(method, request, context, elapsed, code)
                    return result
                return d.addBoth(done)
            wrapped = unary
        else:
            def streaming(stream):
                m.started.inc()
                m.open.inc()
                ended = []

                def end(code):
                    if not ended:
                        ended.append(code)
                        m.open.dec()
                        m.handled(code)

                finish = stream.finish

                def counted_finish(error=None):
                    end(_code_of(error))
                    return finish(error)
                stream.finish = counted_finish
                result = handler(stream)
                on_cancel = stream.on_cancel

                def counted_cancel():
                    end(StatusCode.CANCELLED)
                    return on_cancel()
                stream.on_cancel = counted_cancel
                return result
            wrapped = streaming
        return Method(method.path, method.request_type, method.response_type,
                      method.kind, wrapped, method.http_paths)

    # -- exposition ---------------------------------------------------------------------
    def install(self, router):
        def serve(exchange):
            def render(status):
                self.db_size.set(status.db_size)
                self.db_size_in_use.set(status.db_size_in_use)

            def respond(_):
                # The format the scraper asks for (Prometheus text or OpenMetrics).
                encoder, content_type = choose_encoder(exchange.headers.get("accept", ""))
                exchange.respond(200, [("Content-Type", content_type)],
                                 encoder(self.registry))
            d = self.store.status().addCallback(render)
            d.addErrback(lambda _f: None)      # metrics still render without the store
            d.addCallback(respond)
        router.add("/metrics", serve, methods=("GET",))


class _StoreCollector(object):
    """The store's own figures (a SQL store's replica and write batches), read at scrape
    time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        for name, kind, text, value in self.store.stats():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, text, value=value)

    def describe(self):
        return []


class _ConnectionCollector(object):
    """``etcd_adapter_connections*``: read from the factory's counters at scrape time."""

    def __init__(self, factory):
        self.factory = factory

    def collect(self):
        f = self.factory
        stats = f.stats
        yield GaugeMetricFamily("etcd_adapter_connections",
                                "Client connections now open.", value=len(f.connections))
        yield GaugeMetricFamily("etcd_adapter_connections_limit",
                                "--max-connections (0: no limit).",
                                value=f.limits.max_connections)
        yield CounterMetricFamily("etcd_adapter_connections_accepted",
                                  "Client connections accepted.", value=stats.accepted)
        yield CounterMetricFamily("etcd_adapter_connections_refused",
                                  "Connections closed at once: --max-connections reached.",
                                  value=stats.refused)
        timed_out = CounterMetricFamily(
            "etcd_adapter_connections_timed_out",
            "Connections closed by a timeout: header (--header-timeout, also a stalled "
            "HTTP/1.1 body), idle (--idle-timeout).", labels=("phase",))
        for phase, n in sorted(stats.timed_out.items()):
            timed_out.add_metric((phase,), n)
        yield timed_out
        yield CounterMetricFamily(
            "etcd_adapter_output_paused",
            "Times a connection's unsent output went over its budget, so its new "
            "requests waited.", value=stats.paused)


def _version_gauges(registry):
    """etcd's ``etcd_server_version{server_version}`` (the etcd version our API follows)
    and ours, ``etcd_adapter_version{version}``: 1, the information is in the label."""
    from etcdadapter import __version__
    from etcdadapter.services.identity import SERVER_VERSION
    Gauge("etcd_server_version", "Which etcd version the API follows.",
          ("server_version",), registry=registry).labels(SERVER_VERSION).set(1)
    Gauge("etcd_adapter_version", "Which etcd-adapter version is running.", ("version",),
          registry=registry).labels(__version__).set(1)


class _TLSCollector(object):
    def __init__(self, tls):
        self.tls = tls

    def collect(self):
        yield CounterMetricFamily(
            "etcd_adapter_tls_handshakes_refused",
            "TLS handshakes that failed: no or untrusted client certificate, no common "
            "protocol or cipher, not TLS.", value=self.tls.handshakes_refused)

    def describe(self):
        return []

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

import bisect
import time

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.utils import floatToGoString
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


# grpc_server_handling_seconds buckets (upper bounds, seconds).
_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class _MethodMetrics(object):
    """One method's call counts, kept as plain numbers: every call updates them, and
    prometheus_client's metric objects take a lock per update and walk the histogram's
    buckets in Python (all updates happen on the reactor thread).  Read at scrape time
    by :class:`_CallCollector`."""

    def __init__(self, method):
        service, _, name = method.path[1:].rpartition("/")
        self.labels = (method.kind, service, name)
        self.started = 0
        self.by_code = {}                       # StatusCode -> calls handled
        self.open = 0                           # streaming calls open now
        self.buckets = [0] * (len(_BUCKETS) + 1)    # per bucket (not cumulative), +Inf
        self.seconds = 0.0

    def handled(self, code):
        self.by_code[code] = self.by_code.get(code, 0) + 1

    def observe(self, elapsed):
        self.buckets[bisect.bisect_left(_BUCKETS, elapsed)] += 1
        self.seconds += elapsed


class _CallCollector(object):
    """The grpc_server_* families (go-grpc-prometheus' names) and our open streams."""

    def __init__(self):
        self.methods = []

    def collect(self):
        labels = ("grpc_type", "grpc_service", "grpc_method")
        started = CounterMetricFamily("grpc_server_started_total",
                                      "RPCs started on the server (gRPC and JSON gateway).",
                                      labels=labels)
        handled = CounterMetricFamily("grpc_server_handled_total",
                                      "RPCs completed on the server, by status code.",
                                      labels=labels + ("grpc_code",))
        seconds = HistogramMetricFamily("grpc_server_handling_seconds",
                                        "Time to answer a unary RPC.", labels=labels)
        open_streams = GaugeMetricFamily("etcd_adapter_open_streams",
                                         "Streaming calls (Watch, LeaseKeepAlive) now open.",
                                         labels=("grpc_service", "grpc_method"))
        for m in self.methods:
            if not m.started:
                continue                        # as a labelled child made on first use
            started.add_metric(m.labels, m.started)
            for code, n in sorted(m.by_code.items()):
                handled.add_metric(m.labels + (CODE_NAMES.get(code, str(code)),), n)
            if m.labels[0] == UNARY:
                cumulative, buckets = 0, []
                for bound, n in zip(_BUCKETS + (float("inf"),), m.buckets):
                    cumulative += n
                    buckets.append((floatToGoString(bound), cumulative))
                seconds.add_metric(m.labels, buckets, m.seconds)
            else:
                open_streams.add_metric(m.labels[1:], m.open)
        return (started, handled, seconds, open_streams)

    def describe(self):
        return []


class AdapterMetrics(object):
    def __init__(self, store, watch_service=None, clock=time.monotonic,
                 slow_request=SLOW_REQUEST):
        self.store = store
        self.watch_service = watch_service
        self.clock = clock
        self.slow_request = slow_request
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls = _CallCollector()
        r.register(self.calls)
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
        m = _MethodMetrics(method)
        self.calls.methods.append(m)
        handler = method.handler
        clock = self.clock
        slow = self.slow_request
        if method.kind == UNARY:
            def unary(request, context):
                m.started += 1
                t0 = clock()

                def done(result):
                    elapsed = clock() - t0
                    m.observe(elapsed)
                    code = _code_of(result if isinstance(result, Failure) else None)
                    m.handled(code)
                    if elapsed >= slow:
                        _log_slow(method, request, context, elapsed, code)
                    return result
                try:
                    result = handler(request, context)
                except Exception:
                    done(Failure())
                    raise
                if isinstance(result, defer.Deferred):
                    return result.addBoth(done)
                return done(result)
            wrapped = unary
        else:
            def streaming(stream):
                m.started += 1
                m.open += 1
                ended = []

                def end(code):
                    if not ended:
                        ended.append(code)
                        m.open -= 1
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
